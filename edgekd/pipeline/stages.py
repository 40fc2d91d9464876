"""The compress pipeline, in order. Each stage is a plain function over a RunContext.

The training stages (teacher, student, qat) come first: under torchrun they run on every
rank, and the other ranks leave once they are done (edgekd.pipeline.engine).
"""

from edgekd.pipeline.deploy_stages import EXPORT, QUANTIZE
from edgekd.pipeline.measure_stages import BENCH, REPORT
from edgekd.pipeline.qat_stage import QAT
from edgekd.pipeline.tensorrt_stage import TENSORRT
from edgekd.pipeline.train_stages import DATA, STUDENT, TEACHER

STAGES = [DATA, TEACHER, STUDENT, QAT, EXPORT, QUANTIZE, TENSORRT, BENCH, REPORT]  # records.STAGE_ORDER names them
