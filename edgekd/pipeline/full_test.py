"""Every host artifact scored on the whole test split, streamed (issue #13, item 6).

data/test.npz is what a device scores, so it is capped (TEST_FILE_MAX_SAMPLES / _BYTES in
train_stages): at 224 px it holds 445 images. On the workstation the whole test split is scored
too, by streaming it: one in-order pass of batches sized for memory (`eval_batch_size`, decoded
by the data workers), each batch run through every artifact, so each image is decoded once
whatever the number of artifacts. Memory: the artifacts plus one batch, not the split. Each
artifact takes the batch in calls of SCORE_RUN_BATCH images: ONNX Runtime's CPU arena keeps,
per session, the most its activations ever needed, so the call size (not the decode batch) sets
what every session holds until the stage ends.

Only when the test file is a subset (otherwise the bench stage's accuracy already covers the
whole split). The rows keep `accuracy` on test.npz (what a device's accuracy is compared with)
and gain `accuracy_full_test`.
"""

from __future__ import annotations

import json

import numpy as np

from edgekd.pipeline.context import RunContext
from edgekd.pipeline.records import SUMMARY_FILE, Artifact
from edgekd.runtime.batches import run_in_batches

# Images per artifact call. At 224 px with a teacher, a student and its INT8 model, calls of the
# whole 111-image decode batch grew the process by 3.2 GiB of arenas; calls of 16 by 0.46 GiB.
SCORE_RUN_BATCH = 16


def test_file_is_subset(ctx: RunContext) -> bool:
    """True when data/test.npz holds a stratified subset of the test split (the data stage's summary says)."""
    test_file = json.loads((ctx.run_dir / SUMMARY_FILE).read_text()).get("test_file") or {}
    return bool(test_file) and test_file["samples"] < test_file["of"]


def score_full_test(ctx: RunContext, artifacts: list[Artifact]) -> dict[str, float]:
    """{artifact name: top-1 accuracy on the whole test split}, from one streamed pass per view (one unless
    the student has its own input: the teacher's artifacts read the teacher's view, the student's its own)."""
    scores = {}
    for view in dict.fromkeys(id(ctx.data_for(a.model)) for a in artifacts):
        group = [a for a in artifacts if id(ctx.data_for(a.model)) == view]
        scores.update(_score_split(ctx, group, ctx.data_for(group[0].model).test))
    return scores


def _score_split(ctx: RunContext, artifacts: list[Artifact], split) -> dict[str, float]:
    from edgekd.distill.trainer import eval_batches

    runners = {a.name: _runner(ctx, a) for a in artifacts}
    correct = dict.fromkeys(runners, 0)
    with ctx.ui.progress("scoring the whole test split", len(split), unit="images") as advance:
        for _, x, y in eval_batches(split).epoch(0):
            inputs, labels = x.numpy(), y.numpy()
            for name, run in runners.items():
                correct[name] += int((run(inputs).argmax(1) == labels).sum())
            advance(len(labels))
    return {name: hits / max(1, len(split)) for name, hits in correct.items()}


def _runner(ctx: RunContext, artifact: Artifact):
    """inputs (n, C, H, W) float32 -> logits (n, K), in the artifact's own runtime."""
    path = ctx.run_dir / artifact.path
    if artifact.runtime == "pytorch":
        import torch

        from edgekd.models.io import load_model

        model = load_model(path).eval()

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return run_in_batches(lambda chunk: model(torch.from_numpy(chunk)).float().numpy(), x,
                                      batch_size=SCORE_RUN_BATCH)

        return run_torch
    from edgekd.pipeline.measure_stages import measuring_target
    from edgekd.runtime.ort import make_session, predict

    session = make_session(path, measuring_target(ctx))
    return lambda x: predict(session, x, batch_size=SCORE_RUN_BATCH)
