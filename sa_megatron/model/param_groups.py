"""Which parameters are exempt from weight decay."""
from torch import nn

# Learned position-bias parameters: decay would pull the learned position prior towards "no position".
POSITION_BIAS_PARAMETERS = ("kerple_p", "kerple_a")


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """True for norm weights, biases (the DAPE MLP's included), position-bias parameters (Kerple p, a) and any 1-D
    parameter; False for weight matrices (the DAPE MLP's are decayed like any linear layer's)."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim < 2 or leaf == "bias" or "norm" in name or leaf in POSITION_BIAS_PARAMETERS
