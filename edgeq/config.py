"""QuantConfig: what to quantize and how, declared once. The API takes it, the CLI's quantize flags map one to one
onto its fields and take their defaults from here, and the pipeline's Recipe is built from it. Torch-free: the
CLI reads the defaults without importing the quantizer."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import EdgeqError
from .quant.layout import HEAD_WIDTHS


# The calibration windows' shape: 512 windows of 128 tokens (65,536 tokens, as GPTQ's 128 x 512). Chosen from
# the calibration grid (README): at the same tokens, shorter windows measured better off-domain, since each
# window's first position (the attention sink) weighs more; GPTQ W4 g128 x fp32 Persuasion / news:
# 32 x 2048 1.086 / 1.237, 128 x 512 1.061 / 1.181, 256 x 256 1.045 / 1.165, 512 x 128 1.040 / 1.151,
# 1024 x 64 1.047 / 1.153; W3 g128: 128 x 512 1.307 / 1.861, 512 x 128 1.263 / 1.733.
DEFAULT_SAMPLES = 512
DEFAULT_SEQ_LEN = 128
# Windows (the first of the calibration set) behind the Fisher sensitivity estimates of mixed precision and
# Mix'n'Match: 16,384 tokens, as the 32 x 512 they were measured with before the windows got shorter.
SENSITIVITY_SAMPLES = 128
# The most memory one block call's widest activation may take where no block is trained (the layer methods'
# forwards): their windows go through a block as many at a time as fit, not --batch-size (the training batch
# of block training). Fewer, larger calls: autocast's casts, kernel launches and per-call Python are paid once
# per call, and the GEMMs get tall enough for their full rate; results differ only in float summation order.
# 32 MiB: 42 windows of 128 tokens on SmolLM2 (intermediate 1536), 4 on Llama-3.1-8B (14336).
FORWARD_CALL_BYTES = 32 << 20
# The calibration forward's matrix products (calib/precision.py): auto = bfloat16 where the device has native
# bf16 GEMMs, for the layer methods at 4 bits or more, whose quality under it was measured (docs/calibration.md);
# float32 below 4 bits (measured: W2 loses) and where blocks are trained (learned methods, --block-epochs): not measured.
CALIB_DTYPES = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how; the CLI's flags map one to one onto these fields."""
    method: str = "gptq"
    bits: int = 4
    group_size: int = 128
    sym: bool = False
    samples: int = DEFAULT_SAMPLES
    seq_len: int = DEFAULT_SEQ_LEN
    batch_size: int = 2
    seed: int = 0
    device: str = "cpu"
    solver_opts: dict = field(default_factory=dict)
    block_epochs: int = 0      # block-wise scale training after the solver (decoupleQ's stage 2); 0 = off
    block_lr: float = 5e-3     # Adam on log(scale / solver's scale); best of those tried on SmolLM2 W2
    mixed: object = None  # mixed.MixedPrecision: a width per linear under a size budget (then bits/group unused)
    layer_grids: tuple = ()    # (substring of a linear's name, bits, group size): hand-set grids, later wins
    propagate: str = "quantized"  # next block's calibration inputs: the quantized (GPTQ's) or the float model's
    lm_head: int | None = None  # quantize the output head too, at these bits, on its own Hessian; None: float
    # Each window's first position counts this many times in every Hessian. It holds the attention sink
    # (on SmolLM2 its hidden state is ~160x any other's by block 15) whose keys and values every later
    # token reads; shorter calibration windows, i.e. more first tokens per token, measured better off-domain.
    first_token_weight: float = 1.0
    # Upstream correction (GPTAQ's asymmetric calibration, calib/upstream.py): each linear is fitted, on the
    # quantized model's inputs, this far (0..1) towards the float model's output on the float model's inputs,
    # so it also corrects the error the quantized layers before it left there. 0: GPTQ's objective.
    correct_upstream: float = 0.0
    # The Hessians of a block's input groups from one pass of the float block (False, GPTQ's default), or one pass
    # per group (q/k/v, o, gate/up, down) on the inputs that the block's groups quantized before it give
    # (GPTQ's --true-sequential option, AutoGPTQ's and GPTQModel's default): o_proj then fits its own block's
    # quantized attention, down_proj its quantized gate/up.
    true_sequential: bool = False
    # End-to-end scale training after the block-by-block calibration (calib/e2e.py, EfficientQAT's E2E-QP): every
    # quantized linear's scales trained together, codes frozen, on KL(float model || quantized model) over the
    # calibration windows, --batch-size windows a step. 0 = off.
    e2e_epochs: int = 0
    e2e_lr: float = 1e-3       # Adam on log(scale / calibrated scale)
    e2e_samples: int | None = None  # train on the first N calibration windows (a random sample of the text);
                                    # None: all. A step costs about 3 forwards of the model (float, quantized, backward)
    block_loss: str | None = None  # block training's output error (solvers.method.BLOCK_LOSSES); None: the
                                   # default of the method's kind of training (solvers.method.DEFAULT_BLOCK_LOSS)
    calib_dtype: str = "auto"  # CALIB_DTYPES: the calibration forward's products; states and Hessians stay fp32
    transforms: tuple = ()     # pre-transforms applied to the float model before calibration (transforms/)

    @property
    def spec(self):
        """The grid, a grid.QuantSpec (imported here: grid needs torch)."""
        from .quant.grid import QuantSpec
        return QuantSpec(self.bits, self.group_size, self.sym)

    @property
    def trains_blocks(self) -> bool:
        """Whether each block is trained on its output error: a learned method, or --block-epochs."""
        from .solvers.method import get_method
        return bool(self.block_epochs) or get_method(self.method).learned

    @property
    def trained_block_loss(self) -> str:
        """The block loss that block training (a learned method or --block-epochs) lowers."""
        from .solvers.method import DEFAULT_BLOCK_LOSS, get_method
        return self.block_loss or DEFAULT_BLOCK_LOSS[get_method(self.method).kind]

    def validate(self) -> None:
        """Every refusal that needs no file and no model: run before anything is read or loaded."""
        from .solvers import get_method
        method = get_method(self.method)
        options = method.resolve(self.solver_opts)  # unknown options and bad values refused here
        check_device(self.device)
        if self.calib_dtype not in CALIB_DTYPES:
            raise EdgeqError(f"--calib-dtype must be one of {', '.join(CALIB_DTYPES)}, got {self.calib_dtype!r}")
        check_training_options(self, method.calibrated, method.learned)
        check_end_to_end(self, method.calibrated, method.nested)
        if self.lm_head not in HEAD_WIDTHS.values():
            raise EdgeqError(f"the head is quantized at {' or '.join(k for k, v in HEAD_WIDTHS.items() if v)} bits "
                             f"(a tied embedding shares its codes), not {self.lm_head}")
        if method.nested:
            if self.mixed or self.layer_grids:
                raise EdgeqError(f"{self.method} stores one width for every linear, sliced to the others; it does "
                                 "not mix widths per layer (--budget, --layer-grid)")
            if self.bits != max(options.widths):
                raise EdgeqError(f"{self.method} stores the widest width: bits must be {max(options.widths)} for "
                                 f"widths {list(options.widths)}")


def check_device(device: str) -> None:
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgeqError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise EdgeqError(f"device must be cpu or cuda, got {device!r}")


def check_training_options(config: QuantConfig, calibrated: bool, learned: bool) -> None:
    """Refusals of --block-epochs, --block-lr, --block-loss and --propagate that need no model."""
    from .solvers.method import BLOCK_LOSSES, get_method, method_names
    if config.block_epochs < 0 or not config.block_lr > 0:
        raise EdgeqError("--block-epochs must be >= 0 and --block-lr > 0")
    if config.block_epochs and not calibrated:
        raise EdgeqError(f"--block-epochs needs calibration data; {config.method} uses none")
    if not config.first_token_weight > 0:
        raise EdgeqError(f"--first-token-weight must be > 0, got {config.first_token_weight}")
    if config.propagate not in ("quantized", "float"):
        raise EdgeqError(f"--propagate must be quantized or float, got {config.propagate!r}")
    if config.propagate == "float" and config.trains_blocks:
        raise EdgeqError("--propagate float applies to the layer-wise solvers without --block-epochs (block "
                         "training already has the float targets)")
    check_upstream_correction(config, calibrated, learned)
    check_true_sequential(config, calibrated, learned)
    if config.block_loss is not None and config.block_loss not in BLOCK_LOSSES:
        raise EdgeqError(f"--block-loss must be one of {', '.join(BLOCK_LOSSES)}, got {config.block_loss!r}")
    if config.block_loss is not None and not config.trains_blocks:
        learned_methods = ", ".join(name for name in method_names() if get_method(name).learned)
        raise EdgeqError(f"--block-loss applies to block training: a learned method ({learned_methods}) or "
                         "--block-epochs")
    if config.block_epochs and learned:
        raise EdgeqError(f"{config.method} already trains each block (--steps); --block-epochs does not apply")


def check_end_to_end(config: QuantConfig, calibrated: bool, nested: bool) -> None:
    """--e2e-epochs trains the calibrated model's scales on the calibration windows."""
    if config.e2e_epochs < 0 or not config.e2e_lr > 0 or (config.e2e_samples is not None and config.e2e_samples < 1):
        raise EdgeqError("--e2e-epochs must be >= 0, --e2e-lr > 0 and --e2e-samples >= 1")
    if not config.e2e_epochs:
        return
    if not calibrated:
        raise EdgeqError(f"--e2e-epochs trains on the calibration windows; {config.method} uses none")
    if nested:
        raise EdgeqError(f"--e2e-epochs trains one width's scales; {config.method} serves several from one set")


def check_true_sequential(config: QuantConfig, calibrated: bool, learned: bool) -> None:
    """--true-sequential orders the layer solvers' Hessian passes inside a quantized stream."""
    if not config.true_sequential:
        return
    refuse_unless_layer_solver("--true-sequential", config.method, calibrated, learned,
                               "trains each block's linears together")
    if config.propagate == "float":
        raise EdgeqError("--true-sequential feeds each group the block's quantized earlier groups; --propagate "
                         "float calibrates every block on float inputs")


def check_upstream_correction(config: QuantConfig, calibrated: bool, learned: bool) -> None:
    """--correct-upstream needs the layer solvers' Hessians and a quantized stream that differs from the float one."""
    if not 0.0 <= config.correct_upstream <= 1.0:
        raise EdgeqError(f"--correct-upstream must be between 0 and 1, got {config.correct_upstream}")
    if not config.correct_upstream:
        return
    refuse_unless_layer_solver("--correct-upstream", config.method, calibrated, learned,
                               "already trains each block on the float model's states")
    if config.propagate == "float":
        raise EdgeqError("--correct-upstream corrects the quantized inputs' error; with --propagate float the "
                         "inputs are the float model's and there is none")


def refuse_unless_layer_solver(flag: str, method: str, calibrated: bool, learned: bool, why_learned: str) -> None:
    """A flag that works on the calibrated layer solvers' Hessians: refused for a method without calibration, and
    for a learned method (why_learned says what it does instead)."""
    if not calibrated or learned:
        raise EdgeqError(f"{flag} applies to the calibrated layer solvers; {method} "
                         + ("uses no calibration" if not calibrated else why_learned))


def default_of(name: str):
    """A QuantConfig field's default (the CLI's flags show and use it)."""
    f = next(f for f in fields(QuantConfig) if f.name == name)
    return f.default
