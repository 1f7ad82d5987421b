"""RunConfig's value checks: every key in range and the keys consistent with each other, each
failure one ConfigError line naming the key. Run by RunConfig.__post_init__ (fedsim/config.py);
the rules' and the dataset's checks need more than the config and run in the pre-flight."""

from __future__ import annotations

from fedsim.config_values import ConfigError, parse_counts, parse_ids


def check(cfg) -> None:
    checks = [
        (cfg.num_clients >= 1, "num-clients must be >= 1"),
        (cfg.rounds >= 1, "rounds must be >= 1"),
        (1 <= cfg.clients_per_round <= cfg.num_clients,
         f"clients-per-round must be between 1 and num-clients ({cfg.num_clients}), "
         f"got {cfg.clients_per_round}"),
        (cfg.local_epochs >= 1, "local-epochs must be >= 1"),
        (cfg.batch_size >= 1, "batch-size must be >= 1"),
        (cfg.lr > 0, "lr must be > 0"),
        (cfg.partition_alpha > 0, "partition-alpha must be > 0"),
        (0.0 <= cfg.client_failure_rate < 1.0, "client-failure-rate must be in [0, 1)"),
        (cfg.timesteps >= 2, "timesteps must be >= 2"),
        (cfg.schedule_stride >= 1, "schedule-stride must be >= 1"),
        (1 <= cfg.sample_steps <= cfg.timesteps, "sample-steps must be in [1, timesteps]"),
        (cfg.eval_every >= 0, "eval-every must be >= 0"),
        (0.0 <= cfg.ema_decay < 1.0, "ema-decay must be in [0, 1)"),
        (cfg.num_samples >= 2, "num-samples must be >= 2"),
        (cfg.client_cpus >= 1 and cfg.client_gpus >= 0, "client-cpus must be >= 1 and client-gpus >= 0"),
        (cfg.ray_object_store_mb == 0 or cfg.ray_object_store_mb >= 80,
         "ray-object-store-mb must be 0 (Ray's default) or at least 80 (Ray's minimum is 75 MiB)"),
        (cfg.max_in_flight >= 0, "max-in-flight must be >= 0"),
        (cfg.checkpoint_every >= 0 and cfg.checkpoint_keep >= 1,
         "checkpoint-every must be >= 0 and checkpoint-keep >= 1"),
        (cfg.fedemd_alpha >= 0 and cfg.fedemd_beta >= 0, "fedemd-alpha and fedemd-beta must be >= 0"),
        (0 <= cfg.shapley_decay < 1, "shapley-decay must be in [0, 1)"),
        (cfg.shapley_temperature > 0, "shapley-temperature must be > 0"),
        (0 <= cfg.shapley_explore <= 1, "shapley-explore must be in [0, 1]"),
        (cfg.sampling_decay >= 0, "sampling-decay must be >= 0"),
        (cfg.sampling_min >= 1, "sampling-min must be >= 1"),
        (cfg.ledger_every >= 0 and cfg.ledger_max_mb > 0, "ledger-every must be >= 0 and ledger-max-mb > 0"),
        (cfg.unlearn_rounds >= 1, "unlearn-rounds must be >= 1"),
        (cfg.unlearn_lr >= 0, "unlearn-lr must be >= 0"),
        (0 < cfg.federaser_ratio <= 1, "federaser-ratio must be in (0, 1]"),
        (cfg.ga_radius > 0, "ga-radius must be > 0"),
        (cfg.ga_reference_rounds >= 1, "ga-reference-rounds must be >= 1"),
        (0 <= cfg.ga_stop_accuracy <= 1 and not (cfg.ga_stop_accuracy and cfg.is_diffusion),
         "ga-stop-accuracy must be in [0, 1], and 0 for diffusion models (no accuracy)"),
        (0 <= cfg.malicious_share < 1 and cfg.malicious_scale > 0,
         "malicious-share must be in [0, 1) and malicious-scale > 0"),
        (not cfg.malicious_share or cfg.malicious_kind != "backdoor" or not cfg.is_diffusion,
         "malicious-kind backdoor is for classifiers (its attack success rate is a classification)"),
        (not cfg.malicious_share or cfg.malicious_kind != "label-flip" or not cfg.is_diffusion
         or cfg.conditional, "malicious-kind label-flip needs labels: a classifier or a conditional diffusion model"),
        (0 < cfg.backdoor_fraction <= 1 and cfg.backdoor_target >= 0,
         "backdoor-fraction must be in (0, 1] and backdoor-target >= 0"),
        (0 <= cfg.msgm_weight <= 1 and cfg.msgm_every >= 1 and cfg.msgm_margin >= 0,
         "msgm-weight must be in [0, 1], msgm-every >= 1, msgm-margin >= 0"),
        (cfg.erasediff_lambda >= 0 and cfg.erasediff_eta >= 0, "erasediff-lambda and -eta must be >= 0"),
        (cfg.erasediff_inner_passes >= 0, "erasediff-inner-passes must be >= 0"),
        (0 < cfg.salun_mask_ratio <= 1 and cfg.salun_beta >= 0, "salun-mask-ratio must be in (0, 1], salun-beta >= 0"),
        (cfg.unlearn_grad_clip >= 0 and cfg.grad_clip >= 0, "grad-clip and unlearn-grad-clip must be >= 0"),
        (not cfg.unlearn_method or bool(cfg.forget_clients.strip()) or cfg.forget_class >= 0,
         f"unlearn-method {cfg.unlearn_method} needs a request: forget-clients or forget-class"),
        (cfg.unlearn_method not in ("erasediff", "salun", "msgm") or cfg.is_diffusion,
         f"unlearn-method {cfg.unlearn_method} is for diffusion models (model = ddpm-*)"),
        (cfg.server_lr >= 0 and cfg.proximal_mu >= 0 and 0 <= cfg.server_momentum < 1,
         "server-lr and proximal-mu must be >= 0, server-momentum in [0, 1)"),
        (0 <= cfg.beta_1 < 1 and 0 <= cfg.beta_2 < 1 and cfg.tau > 0,
         "beta-1 and beta-2 must be in [0, 1), tau > 0"),
        (0 <= cfg.trim_beta < 0.5, "trim-beta must be in [0, 0.5)"),
        (cfg.num_malicious >= 0 and cfg.multikrum_select >= 0 and cfg.qffl_q >= 0,
         "num-malicious, multikrum-select and qffl-q must be >= 0"),
        (cfg.compression != "none" or not cfg.compress_downlink,
         "compress-downlink needs a codec: set compression"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for key in ("forget-clients", "backdoor-clients"):
        if parse_ids(getattr(cfg, key.replace("-", "_")), key) is None:
            raise ConfigError(f"{key} must list partition ids, not 'all'")
    for key in ("record_clients", "record_rounds"):
        parse_ids(getattr(cfg, key), key.replace("_", "-"))
    parse_counts(cfg.fedemd_cum_init, "fedemd-cum-init")
    try:
        from fedsim.compression.codecs import codec_settings  # the codecs own their keys

        codec_settings(cfg.to_flwr())
    except ValueError as err:
        raise ConfigError(str(err)) from None
