"""One fine-tuning run: fastai's Learner and SGDR schedule over a timm model.

The run reports every epoch on ONE counter (0, 1, 2, ...) that keeps counting across the
frozen and unfrozen phases of `frozen_then_unfrozen` and across stages; fastai's own epoch
counter restarts at 0 on every fit. A second stage keeps the model (stage 1's weights) and
trains on new loaders at its own image and batch size (fastai's set_data). The optimizer's
state starts fresh at every phase, the stage boundary included: fastai's freeze() and
unfreeze() clear it, as the notebook's learn.freeze() between its stages did. Whoever wants
to stop a run early (a pruner) raises from `on_epoch`; the exception is carried out of
fastai cleanly and re-raised to the caller. A run resumed from its checkpoint trains on
exactly as the uninterrupted run would have (weights, optimizer state, smoothed loss, shuffles).
"""
from __future__ import annotations

import bisect
import itertools
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import fastai.callback.fp16  # noqa: F401  (adds Learner.to_bf16)
import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
import numpy as np
import torch
import torch._dynamo as dynamo
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.schedule import ParamScheduler, SchedCos
from fastai.data.core import DataLoaders
from fastai.learner import AvgSmoothLoss, Learner, Recorder
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed

from swipr_core.data.dataset import Dataset
from swipr_core.data.loaders import Augment, CachedBatches
from swipr_core.data.split import valid_targets as split_valid_targets
from swipr_core.errors import FieldError
from swipr_core.train.checkpoints import fastai_opt_state, load_checkpoint, save_checkpoint
from swipr_core.train.metrics import majority_accuracy, roc_auc
from swipr_core.train.model import ModelSpec, body_and_head, create_model, normalisation
from swipr_core.train.schedule import (
    Phase,
    Schedule,
    StageConfig,
    TrainConfig,
    check_compile_mode,
    check_device,
    cycle_lengths,
)

# frozen_then_unfrozen: the body learns at lr / BODY_LR_DIVISOR, the head at lr (fastai's
# discriminative learning rates, as in fine_tune's slice(base_lr/lr_mult, base_lr)).
BODY_LR_DIVISOR = 100


@dataclass
class EpochRecord:
    epoch: int            # the one counter across phases
    phase: str            # frozen | unfrozen
    train_loss: float
    valid_loss: float
    accuracy: float
    seconds: float
    lrs: list[float] = field(default_factory=list)   # the head's learning rate at every batch
    cycle_end: bool = False   # the learning rate reached its minimum: a cycle ended (pruners compare these)
    images: int = 0           # images trained on in the epoch (images/s = images / seconds)
    finishes: int = 0   # a finished schedule of this many cycles ends here (0: none); see swipr_core.train.schedule
    stage: int = 1      # the stage the epoch trained in (finishes counts that stage's cycles)
    # P(YES) for each validation row (split order), kept where a finished schedule ends: the
    # predictions of the model a trial's value names, taken from fastai's own validation pass
    valid_probs: list[float] | None = None


@dataclass
class TrainResult:
    history: list[EpochRecord]
    metrics: dict
    valid_probs: np.ndarray     # P(YES) for each validation row, in split order
    valid_targets: np.ndarray
    model: torch.nn.Module = field(repr=False)
    mean: tuple = ()
    std: tuple = ()
    config: TrainConfig | None = None   # the run as it ran (with the stage 2 `train`'s `stage2` gave)


def resolve_device(name: str) -> torch.device:
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FieldError("device", f"is '{name}' but no CUDA GPU is visible; use \"auto\" or \"cpu\"")
    return device


def _precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name != "fp32" and device.type != "cuda":
        return "fp32"   # autocast on a CPU is slower than fp32 there, and not what users mean
    return name


class EpochReporter(Callback):
    """Reports each trained epoch on the run's own counter; keeps what the caller raised."""

    order = Recorder.order + 1   # after Recorder has written the epoch's losses

    def __init__(self, run: "_Run", phase: Phase):
        self.run, self.phase = run, phase

    def before_epoch(self):
        self.trained, self.lrs, self.images, self.train_seconds = False, [], 0, 0.0
        end = self.run.schedule.end_at(self.phase.first_epoch + self.epoch)
        self.probs: list[torch.Tensor] | None = [] if end is not None and end.finished else None

    def before_train(self):
        self.started = time.perf_counter()

    def after_batch(self):
        if self.training:
            self.lrs.append(float(self.opt.hypers[-1]["lr"]))
            self.images += len(self.yb[0])
        elif self.probs is not None:   # kept on the device until the epoch ends: no sync per batch
            self.probs.append(torch.softmax(self.pred.detach().float(), dim=1)[:, 1])

    def after_train(self):
        self.train_seconds = time.perf_counter() - self.started

    def after_validate(self):
        self.trained = True

    def after_epoch(self):
        if not self.trained:   # an epoch SkipToEpoch skipped while resuming
            return
        log = self.recorder.log   # [epoch, train_loss, valid_loss, accuracy, time]
        record = EpochRecord(epoch=self.phase.first_epoch + self.epoch, phase=self.phase.name,
                             train_loss=float(log[1]), valid_loss=float(log[2]), accuracy=float(log[3]),
                             seconds=self.train_seconds, lrs=self.lrs, images=self.images, stage=self.phase.stage)
        if self.probs:
            record.valid_probs = torch.cat(self.probs).cpu().tolist()
        self.run.mark(record)
        try:
            self.run.epoch_done(self.learn, record, self.images)
        except BaseException as error:
            self.run.stopped_by = error
            raise CancelFitException() from None


class _Run:
    """State shared by the phases of one run: history, timing, checkpoints, the caller's hook."""

    def __init__(self, on_epoch, checkpoint_dir: Path | None, schedule: Schedule):
        self.history: list[EpochRecord] = []
        self.schedule = schedule
        self.on_epoch = on_epoch
        self.checkpoint_dir = checkpoint_dir
        self.stopped_by: BaseException | None = None
        self.train_seconds = 0.0
        self.train_images = 0
        self.config: TrainConfig | None = None   # set where stage 2 was given late (_Stage2)

    def replan(self, schedule: Schedule) -> None:
        """The run's plan once its stage 2 is known (see `train`'s `stage2`): stage 1's part is the
        same, so only the flags of epochs already in stage 2 (a resumed run's) can change."""
        self.schedule = schedule
        for record in self.history:
            self.mark(record)

    def mark(self, record: EpochRecord) -> EpochRecord:
        """Flag the record's cycle end and finished schedule, from the plan."""
        end = self.schedule.end_at(record.epoch)
        record.cycle_end = end is not None
        record.finishes = end.cycle if end is not None and end.finished else 0
        return record

    def epoch_done(self, learn, record: EpochRecord, images: int) -> None:
        self.history.append(record)
        self.train_seconds += record.seconds
        self.train_images += images
        if self.checkpoint_dir is not None:
            save_checkpoint(self.checkpoint_dir, learn.model, learn.opt, [asdict(r) for r in self.history],
                            self.train_seconds, self.train_images, _smooth_loss_state(learn))
        if self.on_epoch is not None:
            self.on_epoch(record)


def _smooth_loss_state(learn) -> dict:
    """fastai's smoothed training loss so far in the fit, as a checkpoint keeps it: a plain
    tensor, since fastai's TensorBase is no type torch.load(weights_only=True) reads."""
    smooth = learn.recorder.smooth_loss
    return {"val": smooth.val.detach().cpu().as_subclass(torch.Tensor), "count": smooth.count}


class _ResumeSmoothLoss(Callback):
    """Puts back the smoothed training loss a run resumed mid-fit had: fastai's Recorder
    restarts it at every fit, and each epoch's train_loss is its value at the epoch's end."""

    order = Recorder.order + 1   # after Recorder.before_fit has reset it

    def __init__(self, saved: dict):
        self.saved = saved

    def before_fit(self):
        smooth = self.recorder.smooth_loss
        on_device = isinstance(smooth, DeviceSmoothLoss)
        smooth.val = self.saved["val"].to(self.dls.device) if on_device else self.saved["val"]
        smooth.count = self.saved["count"]


def _cycle_at(starts: list[int], epoch: float) -> int:
    """The cycle (0-based) that epoch position `epoch` falls in."""
    return min(max(bisect.bisect_right(starts, epoch + 1e-6) - 1, 0), len(starts) - 2)


def sgdr_schedule(n_cycles: int, cycle_len: int, cycle_mult: int, lr_max) -> Callable[[float], object]:
    """The learning rate at a fraction `pct` of an SGDR fit: a cosine from lr_max to 0 per cycle."""
    # fastai's fit_sgdr combines the cycles with combine_scheds, which asserts that their float
    # shares sum to exactly 1 (false for 6, 7, 10, ... equal cycles) and places cycle starts in
    # float32, so a cycle's first batch can fall one ulp short of its start and get lr 0 (3
    # cycles, cycle_mult 2). Here the cycle is found on whole epochs.
    lengths = cycle_lengths(n_cycles, cycle_len, cycle_mult)
    starts = list(itertools.accumulate(lengths, initial=0))
    total, cosine = starts[-1], SchedCos(lr_max, 0)

    def schedule(pct: float):
        epoch = pct * total   # fastai's pct at an epoch start is epoch / total: off by an ulp at most
        cycle = _cycle_at(starts, epoch)
        return cosine(min(max((epoch - starts[cycle]) / lengths[cycle], 0.0), 1.0))

    return schedule


class ExactSGDR(ParamScheduler):
    """sgdr_schedule's learning rates, computed from the batch's whole position (epoch, batch)
    instead of fastai's accumulated float pct: every run whose first cycles are the same gets
    bit-identical learning rates in them, whatever its total length, so the k-cycle prefix of an
    n-cycle run IS the k-cycle run (nested schedules; swipr_core.train.schedule)."""

    def __init__(self, phase: Phase, lr_max):
        self.lengths = phase.cycle_lengths()
        self.starts = list(itertools.accumulate(self.lengths, initial=0))
        self.cosine = SchedCos(lr_max, 0)
        super().__init__({"lr": self.cosine})   # ParamScheduler records what it set under this key

    def before_batch(self):
        cycle = _cycle_at(self.starts, self.epoch)
        batches = self.lengths[cycle] * self.n_iter
        done = (self.epoch - self.starts[cycle]) * self.n_iter + self.iter
        self.opt.set_hyper("lr", self.cosine(done / batches))


def _fit_sgdr(learn, phase: Phase, lr_max, cbs, start_epoch):
    """fastai's Learner.fit_sgdr, with exact cycle starts and learning rates (ExactSGDR)."""
    if learn.opt is None:
        learn.create_opt()
    learn.opt.set_hyper("lr", lr_max)
    lr_max = np.array([h["lr"] for h in learn.opt.hypers])
    learn.fit(phase.epochs, cbs=[ExactSGDR(phase, lr_max), *cbs], start_epoch=start_epoch)


def make_loaders(dataset: Dataset, image_size: int, batch_size: int, mean, std, device, seed: int = 0,
                 passes: int = 0) -> tuple[CachedBatches, CachedBatches]:
    """(train, valid) batches from the cache at `image_size`. `passes`: training passes already
    made on the run's counter, so a loader built mid-run shuffles as the run's first one would by then."""
    array = dataset.cache.open()
    targets = dataset.split.targets()
    aug = Augment(image_size=image_size, mean=mean, std=std)
    train_idx, valid_idx = dataset.split.indices(False), dataset.split.indices(True)
    train = CachedBatches(array, train_idx, [targets[i] for i in train_idx], batch_size, aug, True,
                          device, seed=seed)
    train.passes = passes
    valid = CachedBatches(array, valid_idx, [targets[i] for i in valid_idx], batch_size, aug, False,
                          device, seed=seed)
    return train, valid


@dataclass
class _StageLoaders:
    """Each stage's loaders on the run's learner, as fastai's set_data: at a stage boundary,
    new loaders at the stage's image and batch size; the model's weights stay (the optimizer's state
    starts afresh at the phase: fastai clears it at every freeze and unfreeze)."""

    dataset: Dataset
    mean: tuple
    std: tuple
    device: torch.device
    seed: int
    stage: int = 1   # whose loaders the learner has now (it is built with stage 1's)

    def enter(self, learn: Learner, phase: Phase, passes: int) -> None:
        """`phase`'s stage's loaders on `learn`; `passes` = epochs done on the run's counter, so
        a run resumed in a stage shuffles exactly as the uninterrupted run."""
        if phase.stage == self.stage:
            return
        train_dl, valid_dl = make_loaders(self.dataset, phase.image_size, phase.batch_size, self.mean, self.std,
                                          self.device, self.seed, passes)
        learn.dls = DataLoaders(train_dl, valid_dl, device=self.device)
        self.stage = phase.stage


# "auto" turns torch.compile on only where it was measured faster (bench/gpu.py's
# "compile" figures); nothing has been measured yet, so auto is off everywhere.
COMPILE_AUTO_ON_DEVICES: tuple[str, ...] = ()


def compile_enabled(mode: str, device: torch.device) -> bool:
    """Whether a run in `mode` (on | off | auto) compiles its model on `device`."""
    check_compile_mode(mode)
    return mode == "on" or (mode == "auto" and device.type in COMPILE_AUTO_ON_DEVICES)


class DeviceSmoothLoss(AvgSmoothLoss):
    """fastai's smoothed training loss copies the loss to the CPU every batch: a sync that
    leaves the GPU idle while Python queues the next step. This one stays on the device;
    fastai reads it once per epoch for the log."""

    def accumulate(self, learn):
        loss = learn.loss.mean().detach()
        if self.count == 0:
            self.val = torch.zeros_like(loss)
        self.count += 1
        self.val = torch.lerp(loss, self.val, self.beta)


def _keep_smooth_loss_on_device(learn) -> None:
    learn.recorder.smooth_loss = DeviceSmoothLoss(beta=learn.recorder.smooth_loss.beta)


def train(dataset: Dataset, config: TrainConfig, model_spec: ModelSpec, device: str = "auto",
          precision: str = "auto", on_epoch: Callable[[EpochRecord], None] | None = None,
          checkpoint_dir: Path | None = None, compile: str = "auto",
          stage2: Callable[[], StageConfig] | None = None) -> TrainResult:
    """Fine-tune and evaluate. With `checkpoint_dir`, each epoch is saved there, and a run
    that finds a checkpoint resumes after its last epoch. `compile`: torch.compile the
    model (on | off | auto = on only where measured faster). `stage2`: config.stage2 only holds
    stage 2's place, and `stage2()` gives the real one once the run reaches it (a search draws
    stage 2's params only for a trial that gets there); TrainResult.config is the run as it ran."""
    torch_device = resolve_device(device)
    precision = _precision(precision, torch_device)
    set_seed(config.seed)
    learn, mean, std = _build_learner(dataset, config, model_spec, torch_device, precision, compile)
    run = _Run(on_epoch, checkpoint_dir, config.schedule())
    saved = _resume(learn, run, checkpoint_dir)
    stages = _StageLoaders(dataset, mean, std, torch_device, config.seed)
    _run_phases(learn, run, stages, saved, _Stage2(config, stage2) if stage2 is not None else None)
    stages.enter(learn, run.schedule.phases[-1], passes=len(run.history))   # also when nothing was left to train
    targets = valid_targets(dataset)
    last = run.history[-1] if run.history else None
    if last is not None and last.valid_probs is not None:   # the last epoch ends the run: a finished schedule
        probs = np.asarray(last.valid_probs, dtype=np.float32)
    else:   # a checkpoint of an older version, without them: one more pass on the last stage's loaders
        probs, targets = predict_valid(learn.model, learn.dls.valid, precision)
    metrics = evaluate(probs, targets, run, config)
    return TrainResult(run.history, metrics, probs, targets, learn.model, mean, std, run.config or config)


def build_learner(dataset: Dataset, config: TrainConfig, model_spec: ModelSpec, device: str = "auto",
                  precision: str = "auto", compile: str = "auto") -> tuple[Learner, tuple, tuple]:
    """(learner, mean, std): the Learner `train` fine-tunes (on stage 1's loaders), its device and
    precision resolved as there, for other uses of the same run (swipr_core.train.lr_find's range test)."""
    torch_device = resolve_device(device)
    set_seed(config.seed)
    return _build_learner(dataset, config, model_spec, torch_device, _precision(precision, torch_device), compile)


def _build_learner(dataset: Dataset, config: TrainConfig, model_spec: ModelSpec, torch_device: torch.device,
                   precision: str, compile: str):
    """A fastai Learner over the timm model and stage 1's cached loaders, on its device and precision."""
    model = create_model(model_spec)
    mean, std = normalisation(model)
    if torch_device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    train_dl, valid_dl = make_loaders(dataset, config.image_size, config.batch_size, mean, std, torch_device,
                                      config.seed)
    dls = DataLoaders(train_dl, valid_dl, device=torch_device)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, splitter=body_and_head,
                    path=tempfile.gettempdir())
    learn.model.to(torch_device)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # one input shape per stage: let cuDNN pick its fastest kernels
        _keep_smooth_loss_on_device(learn)
    if compile_enabled(compile, torch_device):
        # One graph per phase (frozen, unfrozen) × mode (train, eval, no_grad) × batch shape
        # (full, last): more than dynamo's default 8, past which it silently runs eagerly.
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
        learn.model.compile()   # in place: same module, same state_dict keys, fastai's splitter still works
    if precision == "bf16":
        learn.to_bf16()
    elif precision == "fp16":
        learn.to_fp16()
    return learn, mean, std


def _resume(learn, run: _Run, checkpoint_dir: Path | None) -> dict | None:
    """Load the checkpoint's weights and history into the learner and the run, if there is one."""
    saved = load_checkpoint(checkpoint_dir)
    if saved is None:
        return None
    learn.model.load_state_dict(saved["model"])
    # cycle_end and finishes are recomputed from the plan: older checkpoints lack them.
    run.history = [run.mark(EpochRecord(**r)) for r in saved["history"]]
    run.train_seconds, run.train_images = saved["train_seconds"], saved["train_images"]
    learn.dls.train.passes = len(run.history)   # the shuffles continue where the saved run was
    return saved


@dataclass
class _Stage2:
    """A stage 2 given when the run reaches it: `config` holds its place until then."""

    config: TrainConfig
    resolve: Callable[[], StageConfig]

    def enter(self, run: _Run) -> None:
        run.config = replace(self.config, stage2=self.resolve())
        run.replan(run.config.schedule())


def _run_phases(learn, run: _Run, stages: _StageLoaders, saved: dict | None, late: _Stage2 | None = None) -> None:
    """Each phase's SGDR fit, skipping the epochs the run already has; re-raises what stopped it.
    A `late` stage 2 is asked for as the run reaches its first phase (a resumed run's too)."""
    done, index = len(run.history), 0
    with learn.no_logging(), learn.no_bar():
        while index < len(run.schedule.phases):
            if late is not None and run.schedule.phases[index].stage == 2:
                late.enter(run)
                late = None
            phase = run.schedule.phases[index]
            index += 1
            if done >= phase.first_epoch + phase.epochs:
                continue
            start = max(0, done - phase.first_epoch)
            resumed = saved if start > 0 else None   # mid-phase: the fit continues where it stopped
            stages.enter(learn, phase, passes=len(run.history))
            _set_trainable(learn, phase, resumed)
            lr = slice(phase.lr / BODY_LR_DIVISOR, phase.lr) if phase.discriminative else phase.lr
            cbs: list[Callback] = [EpochReporter(run, phase)]
            if resumed is not None and resumed.get("smooth_loss") is not None:
                cbs.append(_ResumeSmoothLoss(resumed["smooth_loss"]))
            _fit_sgdr(learn, phase, lr_max=lr, cbs=cbs, start_epoch=start)
            if run.stopped_by is not None:
                raise run.stopped_by


def _set_trainable(learn, phase: Phase, saved: dict | None) -> None:
    """Freeze or unfreeze for `phase`. fastai clears the optimizer's state at each (as the
    notebook's learn.freeze() between its stages does), so only a run resumed mid-phase
    (`saved`) puts back the optimizer state it had."""
    if phase.name == "frozen":
        learn.freeze()
    else:
        learn.unfreeze()
    for param in learn.model.parameters():
        if not param.requires_grad:
            # fastai zeroes gradients instead of dropping them, and steps every parameter that
            # has one: a body frozen after an unfrozen stage would still shrink by weight decay.
            param.grad = None
    if saved is not None and saved.get("opt") is not None:
        learn.opt.load_state_dict(fastai_opt_state(saved["opt"]))


def valid_targets(dataset: Dataset) -> np.ndarray:
    """The validation split's targets (1 = YES) in split order, as every run's valid loader gives them."""
    return np.asarray(split_valid_targets(dataset.split), dtype=np.int64)


@torch.no_grad()
def predict_valid(model, loader, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    probs, targets = [], []
    device = loader.device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    for images, target in loader:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        probs.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
        targets.append(target.cpu())
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


def evaluate(probs: np.ndarray, targets: np.ndarray, run: _Run, config: TrainConfig) -> dict:
    """The run's summary: last epoch's validation scores, AUC, the majority baseline, speed."""
    last = run.history[-1] if run.history else None
    return {
        "val_loss": last.valid_loss if last else math.nan,
        "val_accuracy": last.accuracy if last else math.nan,
        "val_roc_auc": roc_auc(probs, targets),
        "majority_accuracy": majority_accuracy(targets),
        "epochs": len(run.history),
        "train_seconds": run.train_seconds,
        "train_images_per_s": run.train_images / run.train_seconds if run.train_seconds else 0.0,
    }
