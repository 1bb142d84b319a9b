"""The built-in methods, one record each (see method.py for what a record is). A method's option defaults are
written here and nowhere else: the solvers' signatures take them without defaults.

Adding a method: its module under solvers/ (a `solve` or a Rounding class) and one `register(Method(...))`.
Torch-free (the CLI builds its parser from these records)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import EdgeqError
from ..nesting import DEFAULT_WIDTHS, MultiWidthLoss
from .method import Method, Training, get_method, method_names, methods_with_option, register  # noqa: F401

CLIPS = ("minmax", "mse")
BACKENDS = ("auto", "numba", "torch")


def check_choice(option: str, value, choices) -> None:
    if value not in choices:
        raise EdgeqError(f"{option} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_nesting(widths, weights) -> None:
    MultiWidthLoss.of(widths, weights)  # refuses repeated, out-of-range or unweighted widths


@dataclass(frozen=True)
class RTNOptions:
    clip: str = "minmax"

    def __post_init__(self):
        check_choice("clip", self.clip, CLIPS)


@dataclass(frozen=True)
class GPTQOptions:
    # Measured on SmolLM2-135M W4 g128 (32 x 512 calibration, 20 windows, fp 36.62): act-order + MSE 40.23,
    # act-order + min-max 41.02, natural order + MSE 44.14, + min-max 46.22.
    act_order: bool = True    # columns by descending Hessian diagonal, static groups (no g_idx)
    damp: float = 0.01        # fraction of the mean Hessian diagonal added to it
    clip: str = "mse"
    block_size: int = 128     # columns per lazy update
    backend: str = "auto"     # the column sweep's kernel: numba on the CPU, torch on CUDA

    def __post_init__(self):
        check_choice("clip", self.clip, CLIPS)
        check_choice("backend", self.backend, BACKENDS)
        if not self.damp > 0:
            raise EdgeqError(f"damp must be > 0 (--damp), got {self.damp}")


@dataclass(frozen=True)
class DecoupleQOptions:
    iters: int = 4            # outer iterations (1 = its GPTQ start only)
    damp: float = 0.01
    shrink_steps: int = 80    # candidate ranges of the start's clipping search
    backend: str = "auto"
    trace: list | None = None  # a list to append each iteration's objective to (tests, benchmarks)

    def __post_init__(self):
        check_choice("backend", self.backend, BACKENDS)
        if self.iters < 1 or not self.damp > 0:
            raise EdgeqError(f"iters must be >= 1 and damp > 0, got {self.iters} and {self.damp}")


@dataclass(frozen=True)
class MatQuantOptions(GPTQOptions):
    widths: tuple = DEFAULT_WIDTHS  # the widths the int8 codes serve, widest stored
    weights: tuple | None = None    # each width's error weight (None: nesting.default_weights)

    def __post_init__(self):
        super().__post_init__()
        check_nesting(self.widths, self.weights)


@dataclass(frozen=True)
class CDQuantOptions(GPTQOptions):
    passes: float = 1.0       # greedy moves per row, in units of K (the start is GPTQ's, with GPTQ's options)
    refits: int = 0           # rounds of exact least-squares scales for the codes, each followed by descent
    descent_damp: float = 0.0  # descend on H + this x mean(diag H) x I (towards plain weight error; then
    #                            the objective kept below GPTQ's is that damped one)

    def __post_init__(self):
        super().__post_init__()
        if not self.passes > 0 or self.refits < 0 or self.descent_damp < 0:
            raise EdgeqError(f"passes must be > 0, refits and descent_damp >= 0, got {self.passes}, {self.refits} "
                             f"and {self.descent_damp}")


# Learned methods: steps sized so that SmolLM2-135M takes < 20 min on 2 cores. Learning rates from SmolLM2
# block 3, W3 g128, 100 steps (block output MSE; RTN 0.158): flexround 2.5e-3 0.056, 5e-3 0.046, 1e-2 0.039;
# lrq 2e-3 0.063, 1e-2 0.044 (short runs want larger steps than the papers' 5000-step rates); signround at
# its reference 1/steps.

@dataclass(frozen=True)
class SignRoundOptions(Training):
    pass


@dataclass(frozen=True)
class FlexRoundOptions(Training):
    lr: float | None = 1e-2
    clip: str = "minmax"
    rule: str = "division"    # W / scale (the method) or W / s1 + offset (the paper's ablation)

    def __post_init__(self):
        super().__post_init__()
        check_choice("clip", self.clip, CLIPS)
        check_choice("rounding rule", self.rule, ("division", "addition"))


@dataclass(frozen=True)
class LRQOptions(Training):
    lr: float | None = 1e-2
    clip: str = "mse"
    rank: int | None = None   # rank of the per-weight scales (None: a quarter of the smaller dimension)

    def __post_init__(self):
        super().__post_init__()
        check_choice("clip", self.clip, CLIPS)
        if self.rank is not None and self.rank < 1:
            raise EdgeqError(f"rank must be >= 1, got {self.rank}")


@dataclass(frozen=True)
class MatRoundOptions(Training):
    # the offset counts 2-bit steps (64 int8 codes): a step of 1/steps would move every code by 64/steps, so
    # the rate stays at the 1/150 measured on SmolLM2 whatever the steps are
    lr: float | None = 1 / 150
    widths: tuple = DEFAULT_WIDTHS
    weights: tuple | None = None
    clip: str = "mse"

    def __post_init__(self):
        super().__post_init__()
        check_choice("clip", self.clip, CLIPS)
        check_nesting(self.widths, self.weights)


register(Method("rtn", "layer", RTNOptions, "rtn:solve", needs_hessian=False,
                summary="round to nearest, no calibration"))
register(Method("gptq", "layer", GPTQOptions, "gptq:solve",
                summary="columns rounded in order, each error fed forward through the inverse Hessian"))
register(Method("decoupleq", "layer", DecoupleQOptions, "decoupleq:solve",
                summary="GPTQ rounding alternated with the exact least-squares grid per row; best at "
                        "2-3 bits, a few times slower"))
register(Method("matquant", "layer", MatQuantOptions, "matquant:solve", nested=True,
                summary="int8 codes whose top bits are good 4- and 2-bit weights (one file, three widths)"))
register(Method("cdquant", "layer", CDQuantOptions, "cdquant:solve",
                summary="CDQuant: GPTQ's codes improved by greedy coordinate descent on the layer objective"))
register(Method("signround", "learned", SignRoundOptions, "signround:SignRound", optimizer="sign",
                summary="rounding offsets and clipping learned by signed descent on each block's output "
                        "(AutoRound)"))
register(Method("flexround", "learned", FlexRoundOptions, "flexround:FlexRound",
                summary="rounding by division with learned per-weight scales, on each block's output"))
register(Method("lrq", "learned", LRQOptions, "lrq:LRQ",
                summary="flexround's per-weight scales in low rank"))
register(Method("matround", "learned", MatRoundOptions, "matround:NestedRound", nested=True, optimizer="sign",
                summary="matquant's int8 codes learned on the block error summed over the widths"))


def get_solver(name: str):
    """solve(W, H, spec, **options) of a layer method, defaults filled in, unknown options refused."""
    return get_method(name).solver()


def weighted_error(W, W_hat, H) -> float:
    """The layer objective tr((W - W_hat) H (W - W_hat)^T): the output error on the calibration inputs."""
    D = (W.double() - W_hat.double())
    return float(((D @ H.double()) * D).sum())
