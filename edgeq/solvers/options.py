"""How a method declares its options, and the option flags more than one method shares. Torch-free.

A method's options are a frozen dataclass beside its solver; each field's default is the method's default
(written there and nowhere else) and its metadata, set with `option(default, FLAG)`, is the command-line flag
that sets it: the CLI builds `edgeq quantize`'s method flags from these fields and docs/methods.md lists
them from the same place. A field without a flag is an API-only option. One option name is one flag whatever
method declares it (the CLI refuses two different flags for one name)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..util.argtypes import finite_float, positive_int, weights_arg, widths_arg
from ..errors import EdgeqError
from ..quant.nesting import DEFAULT_WIDTHS, MultiWidthLoss, default_weights

CLIPS = ("minmax", "mse")


@dataclass(frozen=True)
class Flag:
    """A method option's command-line flag: `type` parses its value; `switch` makes it a flag without a value
    that sets the option to False (--no-act-order)."""
    flag: str
    help: str
    type: object = None
    choices: tuple | None = None
    switch: bool = False

    def argparse_keywords(self) -> dict:
        if self.switch:
            return dict(action="store_const", const=False, help=self.help)
        return {k: v for k, v in dict(type=self.type, choices=self.choices, help=self.help).items() if v is not None}


def option(default, flag: Flag | None = None, **field_keywords):
    """A field of an options dataclass, with the flag that sets it from the command line (None: API only)."""
    return dataclasses.field(default=default, metadata={"flag": flag} if flag else {}, **field_keywords)


def flag_of(field: dataclasses.Field) -> Flag | None:
    return field.metadata.get("flag")


def check_choice(option_name: str, value, choices) -> None:
    if value not in choices:
        raise EdgeqError(f"{option_name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_nesting(widths, weights) -> None:
    MultiWidthLoss.of(widths, weights)  # refuses repeated, out-of-range or unweighted widths


# ---- flags of options that several methods have ----

CLIP = Flag("--clip", "range of each group: min-max, or a search over shrunk ranges for the least "
            "(Hessian-weighted, when calibrated) squared error", choices=CLIPS)
DAMP = Flag("--damp", "damping, a fraction of the mean Hessian diagonal", type=finite_float)
ACT_ORDER = Flag("--no-act-order", "sweep columns in natural order (default: by descending Hessian diagonal, "
                 "with static groups: no g_idx)", switch=True)
WIDTHS = Flag("--widths", "the widths the codes serve, the widest stored", type=widths_arg)
WEIGHTS = Flag("--weights", "weight of each width's error, in --widths order (for "
               f"{','.join(map(str, DEFAULT_WIDTHS))}: {','.join(f'{w:g}' for w in default_weights(DEFAULT_WIDTHS))}; "
               "else all 1)", type=weights_arg)
STEPS = Flag("--steps", "training steps per block, each on --batch-size windows", type=positive_int)
LR = Flag("--lr", "learning rate, decayed to 0 over the steps (unset: 1/steps)", type=finite_float)
