"""Specs: YAML files -> strict, validated models of sweeps (`sweep.Spec`) and tuning runs (`tune.TuneSpec`)."""
