import textwrap
from pathlib import Path

import pytest

from edgekd.config import CompressConfig, load_config
from edgekd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_example_validates():
    cfg = load_config(REPO / "examples" / "digits.yaml")
    assert cfg.name == "digits" and cfg.data.kind == "digits"
    assert cfg.quantize.calibration.is_file()


def test_defaults_are_a_valid_config():
    assert CompressConfig().targets == ["host-cpu"]


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "teacher:\n  modle: resnet18\n"))
    assert "teacher.modle" in str(err.value) and "did you mean 'model'" in str(err.value)


def test_wrong_type_names_the_key_path(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "distill:\n  train:\n    epochs: ten\n"))
    assert "distill.train.epochs" in str(err.value) and "'ten'" in str(err.value)


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "teacher:\n  model: [resnet18\n"))
    assert "not valid YAML" in str(err.value) and "line" in str(err.value)


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value) and "edgekd init" in str(err.value)


def test_missing_dataset_path_names_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "data:\n  kind: idx\n  path: no/such/folder\n"))
    assert "data.path" in str(err.value) and "no/such/folder" in str(err.value)


def test_cross_field_rule_checked_at_load(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "data:\n  kind: imagefolder\n"))
    assert "needs data.path" in str(err.value)


def test_opset_above_target_maximum_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "export:\n  opset: 20\ntargets: [host-cpu, jetson-xavier-nx]\n"))
    assert "jetson-xavier-nx" in str(err.value) and "17" in str(err.value)


def test_unknown_target_suggests_a_known_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "targets: [rpi-5]\n"))
    assert "rpi5" in str(err.value)


def test_name_defaults_to_file_stem_and_paths_resolve_from_config_folder(tmp_path):
    (tmp_path / "calib.yaml").write_text("samples: 8\n")
    cfg = load_config(write(tmp_path, "quantize:\n  calibration: calib.yaml\n"))
    assert cfg.name == "model"
    assert cfg.quantize.calibration == tmp_path / "calib.yaml"


def test_feature_example_validates():
    cfg = load_config(REPO / "examples" / "digits-features.yaml")
    assert [loss.kind for loss in cfg.distill.losses] == ["kd", "fitnets"] and cfg.student.init == "teacher"


def test_each_loss_kind_checks_its_own_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "distill:\n  losses:\n    - kind: dkd\n      alpah: 1\n"))
    assert "distill.losses.0.alpah" in str(err.value) and "did you mean 'alpha'" in str(err.value)
    assert "beta" in str(err.value)  # DKD's own keys are listed, not KD's
    with pytest.raises(ConfigError, match="unknown key 'distill.losses.0.alpha'"):
        load_config(write(tmp_path, "distill:\n  losses:\n    - kind: fitnets\n      alpha: 1\n"))


def test_unknown_loss_kind_suggests_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "distill:\n  losses:\n    - kind: fitnet\n"))
    assert "'distill.losses.0.kind': unknown kind 'fitnet' (did you mean 'fitnets'?)" in str(err.value)


def test_a_loss_without_kind_is_kd(tmp_path):
    cfg = load_config(write(tmp_path, "distill:\n  losses:\n    - temperature: 2\n"))
    assert cfg.distill.losses[0].kind == "kd" and cfg.distill.losses[0].temperature == 2


def test_cross_field_rules_for_student_init_and_fp16(tmp_path):
    with pytest.raises(ConfigError, match="remove student.model"):
        load_config(write(tmp_path, "student:\n  model: resnet10t\n  init: teacher\n"))
    with pytest.raises(ConfigError, match="fp16' needs CUDA"):
        load_config(write(tmp_path, "device: cpu\ndistill:\n  train:\n    amp: fp16\n"))


def test_response_scheme_keys_load(tmp_path):
    cfg = load_config(write(tmp_path, """\
        data: {train_fraction: 0.03}
        distill:
          unlabeled_fraction: 0.5
          losses:
            - {kind: kd, divergence: symmetric, divergence_mix: 0.3, alpha_end: 0.5, temperature: 8, temperature_end: 2,
               schedule: cosine}
            - {kind: tfkd, a: 0.8}
        """))
    kd, tfkd = cfg.distill.losses
    assert (kd.divergence, kd.divergence_mix, kd.alpha_end, kd.temperature_end, kd.schedule) == (
        "symmetric", 0.3, 0.5, 2, "cosine")
    assert (tfkd.a, tfkd.temperature, tfkd.alpha) == (0.8, 20.0, 0.9)
    assert cfg.data.train_fraction == 0.03 and cfg.distill.unlabeled_fraction == 0.5


def test_response_scheme_keys_that_would_do_nothing_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="divergence_mix only applies to divergence: symmetric"):
        load_config(write(tmp_path, "distill:\n  losses:\n    - {kind: kd, divergence: reverse, divergence_mix: 0.2}\n"))
    with pytest.raises(ConfigError, match="add alpha_end or temperature_end"):
        load_config(write(tmp_path, "distill:\n  losses:\n    - {kind: kd, schedule: cosine}\n"))
    with pytest.raises(ConfigError, match="those samples would train nothing"):
        load_config(write(tmp_path, "distill:\n  unlabeled_fraction: 0.5\n  losses: [{kind: ce}, {kind: tfkd}]\n"))
    with pytest.raises(ConfigError, match="distill.losses.0.a"):
        load_config(write(tmp_path, "distill:\n  losses:\n    - {kind: tfkd, a: 1.0}\n"))
    with pytest.raises(ConfigError, match="distill.unlabeled_fraction"):
        load_config(write(tmp_path, "distill:\n  unlabeled_fraction: 1.0\n"))
    with pytest.raises(ConfigError, match="data.train_fraction"):
        load_config(write(tmp_path, "data:\n  train_fraction: 0\n"))

# ---- multi-pass schemes


def test_teachers_list_makes_the_first_the_primary_and_resolves_every_checkpoint(tmp_path):
    (tmp_path / "b.pt").write_bytes(b"")
    cfg = load_config(write(tmp_path, """
        teachers:
          - {model: resnet34, weight: 2}
          - {model: resnet18, checkpoint: b.pt}
    """))
    assert cfg.teacher.model == "resnet34" and cfg.teachers[0].weight == 2.0
    assert cfg.teachers[1].checkpoint == tmp_path / "b.pt"
    with pytest.raises(ConfigError, match=r"teachers\[0\].checkpoint"):
        load_config(write(tmp_path, "teachers: [{model: resnet18, checkpoint: missing.pt}]\n"))


@pytest.mark.parametrize("text, message", [
    ("teacher: {model: resnet18}\nteachers: [{model: resnet34}]\n", "give teacher or teachers, not both"),
    ("teachers: [{model: resnet18}, {model: resnet34}]\ndistill: {losses: [{kind: kd}, {kind: at}]}\n",
     "at read one teacher's internals"),
    ("teachers: [{model: resnet18}, {model: resnet34}]\ndistill: {scheme: online}\n", "does not use a teacher"),
    ("distill: {peers: 3}\n", "distill.peers applies to scheme: online only"),
    ("distill: {scheme: online, losses: [{kind: ce}]}\n", "distill.losses does not apply"),
    ("distill: {scheme: online, assistants: [{width: 0.5}]}\n", "no teacher to chain"),
    ("distill: {generations: 2}\nstudent: {init: teacher}\n", "does not apply to assistants, born-again"),
    ("distill: {assistants: [{model: resnet10t, width: 0.5}]}\n", "either model or width/depth"),
    ("distill: {generations: 0}\n", "generations"),
])
def test_scheme_combinations_that_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_schemes_are_refused_under_torchrun_before_any_work(tmp_path, monkeypatch):
    from edgekd.pipeline.compress import preflight

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="distill.scheme: online is not supported under torchrun"):
        preflight(write(tmp_path, "quantize: {enabled: false}\ndistill: {scheme: online}\n"))


def test_the_default_calibration_and_targets_are_found_from_any_folder(tmp_path):
    from edgekd import BUILTIN_DIR

    cfg = load_config(write(tmp_path, "targets: [rpi5, jetson-orin-nano]\n"))  # calibration left at its default
    assert cfg.quantize.calibration == BUILTIN_DIR / "calib" / "digits.yaml" and cfg.quantize.calibration.is_file()
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "digits.yaml").write_text("samples: 64\n")
    assert load_config(write(tmp_path, "name: own\n")).quantize.calibration == tmp_path / "calib" / "digits.yaml"


def test_the_old_int8_bound_name_says_what_it_became(tmp_path):
    with pytest.raises(ConfigError, match="quantize.max_int8_drop") as err:
        load_config(write(tmp_path, "quantize: {max_accuracy_drop: 0.02}\n"))
    assert "budgets.max_accuracy_drop" in str(err.value)  # the other bound: the student vs the teacher


def test_val_and_test_fractions_leave_data_to_train_on(tmp_path):
    with pytest.raises(ConfigError, match="leave nothing to train on"):
        load_config(write(tmp_path, "data: {val_fraction: 0.5, test_fraction: 0.5}\n"))


def test_a_jetson_int8_target_needs_calibration_even_with_quantize_off(tmp_path):
    from edgekd.config import needs_calibration
    from edgekd.targets import load_target

    text = "quantize: {enabled: false, calibration: missing.yaml}\ntargets: [jetson-orin-nano]\n"
    with pytest.raises(ConfigError, match="quantize.calibration"):  # refused at validation, not mid-run
        load_config(write(tmp_path, text))
    off = CompressConfig(quantize={"enabled": False})
    assert needs_calibration(off, [load_target("jetson-orin-nano")])
    assert not needs_calibration(off, [load_target("host-cpu")])
    qat = CompressConfig(quantize={"enabled": False}, student={"quantization": "qat"})
    assert not needs_calibration(qat, [load_target("jetson-orin-nano")])  # the QAT export is the INT8 file


def test_a_warmup_as_long_as_training_is_said(tmp_path):
    from edgekd.config import config_warnings

    cfg = load_config(write(tmp_path, "teacher: {train: {epochs: 1}}\ndistill: {train: {epochs: 4, warmup_epochs: 0.5}}\n"))
    [warning] = config_warnings(cfg)  # the teacher's default warmup_epochs 1.0 covers its one epoch
    assert warning.startswith("teacher.train.warmup_epochs 1 >= epochs 1") and "cosine decay never runs" in warning
    assert config_warnings(load_config(write(tmp_path, "name: fine\n"))) == []


@pytest.mark.parametrize("text, message", [
    ("student: {width: 0.5, search: {models: [resnet10t]}}\n", "student.search chooses the student, so student.width"),
    ("student: {init: teacher, search: {models: [resnet10t]}}\n", "prunes the teacher into a derived student"),
    ("student: {search: {widths: [0.5], depths: [1.0]}}\ndistill: {assistants: [{width: 0.5}]}\n",
     "remove distill.assistants, or student.search"),
    ("data: {input_size: 32}\nstudent: {search: {models: [resnet10t], input_sizes: [32, 16]}}\n"
     "distill: {losses: [{kind: kd}, {kind: fitnets}]}\n",
     r"includes 16 px: at that size .* feature losses .* or remove 16 from student.search.input_sizes"),
    ("quantize: {enabled: false}\nstudent: {search: {models: [resnet10t], precisions: [int8]}}\n",
     "this run makes no int8 student file"),
    ("targets: [jetson-orin-nano]\nstudent: {search: {models: [resnet10t], precisions: [fp32]}}\n",
     "this run makes no fp32 student file"),
    ("student: {search: {models: [resnet10t], hosts: {rpi5: pi@pi}}}\n", "student.search.hosts names 'rpi5'"),
    ("student: {search: {models: [resnet10t], latency_table: missing.json}}\n", "which does not exist"),
])
def test_student_search_rules_checked_at_load(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_student_search_latency_table_resolves_from_the_config_folder(tmp_path):
    (tmp_path / "pi.json").write_text("{}")
    cfg = load_config(write(tmp_path, "student: {search: {models: [resnet10t], latency_table: pi.json}}\n"))
    assert cfg.student.search.latency_table == tmp_path / "pi.json"


def test_student_search_is_refused_under_torchrun(tmp_path, monkeypatch):
    from edgekd.pipeline.compress import preflight

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="student.search is not supported under torchrun"):
        preflight(write(tmp_path, "student: {search: {models: [resnet10t]}}\n"))
