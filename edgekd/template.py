"""The commented model.yaml that `edgekd init` writes. Every key, its default, what it means."""

TEMPLATE = """\
# edgekd model.yaml — `edgekd compress model.yaml` runs it, `edgekd validate model.yaml` checks it.
# Every key below is optional and shows its default; delete what you do not change.
version: 1
name: my-model              # run directory: runs/<name>/ (default: this file's name)
seed: 0                     # one seed for splits, init, shuffling: same seed, same run
device: auto                # auto | cpu | cuda — where training runs

data:
  kind: digits              # digits (built in) | idx (MNIST-format .gz files) | imagefolder (ROOT/<class>/*.png,
                            #   or ROOT/train with ROOT/val and/or ROOT/test) | webdataset (tar shards: shards)
  # path: /usr/share/datasets/fashion-mnist   # idx / imagefolder root (relative paths: from this file)
  # shards: /data/shards    # kind: webdataset: *.tar folder (or train/ val/ test/), glob, or pipe:/URL list
  input_size: 32            # square side the model sees
  channels: 1               # 1 (grey) or 3 (RGB)
  val_fraction: 0.2         # carved from the training data for validation (every choice: best epoch, INT8 gate)
                            #   when the source has none (digits, idx, imagefolder without ROOT/val)
  test_fraction: 0.2        # carved for the test split (every reported accuracy) when the source has none
                            #   (digits, imagefolder without ROOT/test); idx uses its t10k files
  augment: none             # none | crop | crop_flip | timm (imagefolder; any augmentation runs the teacher live)
  # train_transform:        # augment: timm only, timm's names: scale, ratio, hflip, vflip, color_jitter,
  #   scale: [0.08, 1.0]    #   auto_augment (e.g. rand-m9-mstd0.5), interpolation, re_prob, re_mode, re_count
  #   auto_augment: rand-m9-mstd0.5
  # workers: 4              # processes decoding images (imagefolder) and drawing train.augment views
                            #   (default: this machine's cores; 0: in-process)
  cache: none               # imagefolder: uint8 = decode each image once into a file at training size, reused
  # cache_dir: ~/.cache/edgekd/data   # where that cache lives (default: <run dir>/cache/data)
  on_bad_image: error       # imagefolder: error = list every unreadable image and stop; skip = leave them out
  # synthetic:              # data-free distillation: transfer images generated from the teacher (docs/data_free.md)
  #   method: dafl          #   deepinversion | deepinversion_imagenet (BatchNorm teachers) | zskt | dafl
  #   count: 2048           #   images generated (cached by teacher + method + settings + seed; resumable)
  #   seed: 0
  #   rounds: 1000          #   any of the method's settings (published defaults otherwise)
  train_fraction: 1.0       # the student trains on this stratified share of the training split (the teacher on all)
  # mean: [0.5]             # default: measured on the training split (digits/idx) or the teacher's timm config
  # std: [0.5]

# teachers:                 # multi-teacher distillation, instead of `teacher:` (not both); same keys plus weight.
#   - {model: resnet34, weight: 2.0}   # the first is the primary: teacher.safetensors, report rows, export, QAT
#   - {model: resnet18, weight: 1.0}   # the others -> teachers/<i>.safetensors
#                           # soft targets: log of the weighted mean of probabilities; ce/kd/dkd losses only
teacher:
  recipe: standard          # standard: the keys below | strong: sgd (Nesterov) lr 0.05, label smoothing 0.1,
                            #   crop + flip + random erasing, weight EMA, 30 epochs; any key it sets can be overridden
  model: resnet18           # any timm model name
  pretrained: false         # true downloads timm's weights (needs the model hub)
  # checkpoint: teacher.pth # a state dict, timm checkpoint, .safetensors or edgekd checkpoint
  trust_checkpoint: false   # true unpickles a torch checkpoint fully: it can run code, use only for a file you
                            # trust; false reads torch files weights-only (docs/security.md)
  # finetune: true          # default: train only when the weights are random or the head was reset
  train:
    epochs: 8
    batch_size: 64
    optimizer: adamw        # adamw | sgd
    lr: 0.002
    weight_decay: 0.05
    schedule: cosine        # cosine | onecycle | constant, after `warmup_epochs` of linear warm-up
    warmup_epochs: 1.0
    label_smoothing: 0.0
    # grad_clip: 1.0
    # early_stopping: 5     # epochs without a better val accuracy
    amp: none               # none | bf16 (CPU or CUDA autocast) | fp16 (CUDA only, with a GradScaler)
    tensorboard: false      # event files under runs/<name>/work/<model>/tensorboard (needs `tensorboard`)
    ema: false              # weight EMA (timm ModelEmaV3): scored on val every epoch; the better of model and
                            #   average becomes the checkpoint (metrics: best_weights)
    # ema_decay: 0.999      # ema only: per-step decay, reached after timm's warm-up ramp
    # augment:              # this training's augmentation (timm's names), drawn per sample in the loader
                            #   workers after the split's transform (timm's too); replaces crop/crop_flip
    #   pad_crop: 4         #   random crop of a reflect-padded image
    #   hflip: 0.5          #   flip probabilities (vflip: 0.0)
    #   re_prob: 0.0        #   random erasing: probability, re_mode const|rand|pixel, re_count boxes
    #   mixup: 0.0          #   mixup alpha (> 0: on); cutmix: 0.0 alpha; mixup_prob 1.0, mixup_switch_prob 0.5,
    #                       #   mixup_mode batch|pair|elem, cutmix_minmax. Mixed batches: soft labels; in distill,
    #                       #   teacher and student get the same mixed tensor (the teacher runs live, or
    #                       #   replays: distill.replay_views). Picture keys go in data.train_transform

student:
  # model: resnet10t        # a timm model name; default: derived from the teacher
  width: 0.25               # channel multiplier (derived students)
  depth: 0.5                # blocks-per-stage multiplier (derived students)
  quantization: none        # qat: quantization-aware INT8 fine-tuning (needs edgekd[qat]) -> student.qat.onnx
  init: random              # random | teacher: prune the teacher into the student (ResNet, ConvNeXt)
  # search:                  # fit the student to each target's latency budget, measured there (docs/search.md);
  #                         # replaces model/width/depth (remove them)
  #   widths: [0.25, 0.5]   # derived candidates: every width x depth pair, each in (0, 1]
  #   depths: [0.5, 1.0]
  #   models: []            # named timm candidates, e.g. [mobilenetv3_small_050, resnet10t]
  #   precisions: [fp32, int8]  # default: those the target lists that this run makes
  #   proxy_epochs: 4       # short distillation ranking the candidates that fit (val split); 0: rank by FLOPs
  #   proxy_fraction: 1.0   # share of the student's training rows the proxy runs use (large data: lower it)
  #   max_candidates: 24    # most architectures x input sizes (a larger grid is refused)
  #   margin: 0.9           # fits when p50 <= margin x budgets.latency_ms (peak memory likewise)
  #   per_target: true      # several targets: one student per target (students/<arch>/); false: the best that fits them all
  #   # latency_table: rpi5-table.json  # `edgekd profile` output of an offline device ({target: path} for several)
  #   # hosts: {rpi5: pi@raspberrypi}   # measure that target over ssh (else the profile's host, else this machine)

distill:
  recipe: standard          # standard: the keys below | function_matching (Beyer et al. 2022): kd with alpha 1, T 1
                            #   (KL to the teacher only), teacher and student on the same mixup/cutmix batch, weight
                            #   EMA, 100 epochs; any key it sets can be overridden (edgekd/distill/recipes.py)
  losses:
    - kind: kd              # Hinton KD: alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * CE
      weight: 1.0
      temperature: 4.0
      alpha: 0.9
      divergence: forward   # forward KL(T||S), mass-covering | reverse KL(S||T), mode-seeking | symmetric
      # divergence_mix: 0.5 # symmetric only: (1 - mix) * forward + mix * reverse
      # alpha_end: 0.5      # move alpha here over training (default: constant)
      # temperature_end: 2.0
      # schedule: linear    # linear | cosine, by the share of optimizer steps done
    # Other kinds, summed by weight (each has its own keys):
    # - {kind: ce}                                         # cross-entropy with the labels
    # - {kind: dkd, temperature: 4.0, alpha: 1.0, beta: 8.0}   # decoupled KD (TCKD + NCKD), no CE inside
    # - {kind: tfkd, a: 0.9, temperature: 20.0, alpha: 0.9}    # teacher-free KD: a virtual teacher right with prob. a
    # - {kind: fitnets}                                    # hints through trained 1x1 adapters
    # - {kind: at, beta: 1000.0}                           # attention transfer
    #   (fitnets/at pair stages by spatial size; override: pairs: [{student: layer3, teacher: layer3}])
    # - {kind: rkd, distance_weight: 25.0, angle_weight: 50.0}  # relational KD on penultimate embeddings
  # assistants:             # teacher-assistant chain (TAKD): teacher -> each assistant -> student
  #   - {width: 0.5}        # a derived student (keys left out: student's); or {model: resnet10t}
  # generations: 1          # born-again: >1 = the student teaches a fresh copy of itself; the last one is kept
  # scheme: offline         # online: deep mutual learning among `peers` students, no teacher (it is still
  # peers: 2                #   trained for the report); each peer: CE + T^2 * KL(other peers || itself)
  # peer_temperature: 1.0   #   online only; distill.losses/assistants/generations do not apply
  teacher_cache: true       # compute teacher logits once when inputs repeat every epoch and all losses read logits only
  replay_views: 0           # with augmentation: 0 = live teacher; K = logits of K fixed views per image computed
                            #   once (fp16 on disk), replayed (epoch e shows view e mod K); logit losses only
  replay_topk: 0            # with replay_views: 0 = every logit; k = the k largest per view (FKD), the rest spread evenly
  unlabeled_fraction: 0.0   # this share of the student's samples is used without labels (withheld from the teacher too)
  # synthetic_fraction: 1.0 # with data.synthetic: share of synthetic images in every batch (1: synthetic only)
  train:                    # same keys as teacher.train
    epochs: 15
    batch_size: 64          # per process under torchrun (global batch = processes x batch_size)
    lr: 0.003
    # scale_lr: false       # torchrun: lr x number of processes
  # qat:                    # student.quantization: qat only: fine-tuning with INT8 fake quantizers in place
  #   epochs: 3
  #   lr: 0.0003            # about a tenth of the distillation rate

export:
  # opset: 17               # default: the strictest target's maximum
  exporter: auto            # auto (dynamo, falling back to torchscript) | dynamo | torchscript
  simplify: true            # onnxsim; a failure keeps the unsimplified model and says so
  dynamic_batch: true       # symbolic batch dimension (the batch-size sweep needs it)
  parity:                   # PyTorch vs ONNX Runtime on validation samples; a miss fails the run
    samples: 128
    atol: 0.0001            # max |logit difference|
    min_top1_agreement: 0.99

quantize:
  enabled: true             # ONNX Runtime static INT8 (QDQ)
  calibration: calib/digits.yaml   # which split, how many samples, seed; calib/... is shipped with edgekd
  method: minmax            # minmax | entropy | percentile
  per_channel: true
  # max_int8_drop: 0.02     # INT8 gate: val accuracy vs the FP32 student; default: the strictest
                            #   budgets.max_int8_drop of the targets the INT8 file serves
  fallbacks: true           # on a failed gate, try other calibrations and float-kept layers

targets: [host-cpu]         # `edgekd targets` lists profiles; each gets its own budget verdicts, judged only
                            # where this machine is that target (others: measure on the device, the report says how);
                            # budgets.max_accuracy_drop there bounds the student vs the teacher

bench:
  warmup_s: 1.0
  min_iterations: 100       # at least this many runs...
  min_seconds: 2.0          # ...and at least this long, per artifact and batch size
  batch_sizes: [1, 8]
  rounds: 5                 # interleaved rounds across artifacts
"""
