"""The compress pipeline, in order. Each stage is a plain function over a RunContext.

The training stages (teacher, student, qat) come first: under torchrun they run on every
rank, and the other ranks leave once they are done (edgekd.pipeline.engine). With
`student.search`, its candidates are measured before anything trains (search) and ranked
after the teacher (choose); without it both stages do nothing.
"""

from edgekd.pipeline.deploy_stages import EXPORT, QUANTIZE
from edgekd.pipeline.measure_stages import BENCH, REPORT
from edgekd.pipeline.qat_stage import QAT
from edgekd.pipeline.search_stage import CHOOSE, SEARCH
from edgekd.pipeline.tensorrt_stage import TENSORRT
from edgekd.pipeline.synth_stage import SYNTHETIC
from edgekd.pipeline.train_stages import DATA, STUDENT, TEACHER

# records.STAGE_ORDER names them
STAGES = [DATA, SEARCH, TEACHER, CHOOSE, SYNTHETIC, STUDENT, QAT, EXPORT, QUANTIZE, TENSORRT, BENCH, REPORT]
