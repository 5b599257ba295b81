"""Scaling-law studies: functional forms, fits with bootstrap errors, FLOP counting, model
ladders, plots."""
from jaxmtl.scaling.fit import (ComputeOptimal, FitResult, HOFFMANN_PARAMS, compute_optimal,
                                epoch_grid, epoch_outlier_mask, fit_chinchilla, fit_isoflop,
                                fit_kaplan, fit_loss_to_loss, fit_olmo_two_step,
                                fit_porian_exponent, fit_power_law, group_budgets,
                                loss_to_loss_grid)
from jaxmtl.scaling.flops import (ParamCount, attended_keys, model_flops_per_token,
                                  model_param_count, olmo_flops_per_token, param_count, six_n,
                                  transformer_flops_per_token)
from jaxmtl.scaling import laws

__all__ = [
    "ComputeOptimal", "FitResult", "HOFFMANN_PARAMS", "compute_optimal", "epoch_grid",
    "epoch_outlier_mask", "fit_chinchilla", "fit_isoflop", "fit_kaplan", "fit_loss_to_loss",
    "fit_olmo_two_step", "fit_porian_exponent", "fit_power_law", "group_budgets",
    "loss_to_loss_grid", "ParamCount", "attended_keys", "model_flops_per_token",
    "model_param_count", "olmo_flops_per_token", "param_count", "six_n",
    "transformer_flops_per_token", "laws",
]
