"""Mutation check: does the test suite catch the bugs that matter?

    python tools/mutation_check.py [--mutants=NAME,...] [--jobs=N] [--list] [--skip_baseline]
                                   [--fresh]

Copies the tree to a scratch directory, then applies each mutant of MUTANTS there (a small
deliberate bug: one exact piece of source replaced), runs only the tests that should catch
it, and restores the file. A mutant is caught when one of those tests fails; the table names
the first test that did. First, the same tests run on the unmutated copy and must pass, or a
failure would prove nothing. Exit status: 0 if every mutant was caught, 1 if any survived, 2
if a mutant no longer applies (its source moved: update MUTANTS) or the baseline fails.

`--fresh` only checks, in a second, that every mutant still applies (its piece of source
occurs once, its tests exist); the test suite runs that check (tests/test_mutation_check.py).

Took about 14 minutes on a 2-core machine for the first 22 mutants (README.md has the times
of the rest); the tests share the repository's JAX compilation cache (.cache/jax).
`--jobs=N` checks N mutants at once, each in its own copy of the tree.
"""

import argparse
import concurrent.futures
import dataclasses
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
  name: str
  path: str  # Relative to the repository root.
  original: str  # Must occur exactly once in the file.
  mutated: str
  tests: tuple[str, ...]  # pytest node ids, relative to the repository root.


PARITY = 'tests/test_torch_parity.py'
METHODS_TESTS = 'tests/methods/test_methods.py'
OPTIMIZERS_TESTS = 'tests/test_official_optimizers.py'
LOSSES_TESTS = 'tests/methods/test_official_losses.py'
DEFAULTS_TESTS = 'tests/test_official_defaults.py'
DEVICE_AUG = 'simsiam_jax/data/device_augmentations.py'
DEVICE_AUG_TESTS = 'tests/data/test_device_augmentations.py'

MUTANTS = (
    Mutant('no_stop_gradient', 'simsiam_jax/losses.py',
           '    z2 = jax.lax.stop_gradient(z2)', '    z2 = z2',
           ('tests/test_losses.py',)),
    Mutant('swapped_optimizer_labels', 'simsiam_jax/optimizer.py',
           'PREDICTOR if n == PREDICTOR else ENCODER', 'ENCODER if n == PREDICTOR else PREDICTOR',
           ('tests/test_optimizer.py',)),
    Mutant('decay_mask_without_biases', 'simsiam_jax/optimizer.py',
           'optax.add_decayed_weights(optim.weight_decay),',
           'optax.add_decayed_weights(optim.weight_decay, mask=lambda p: '
           "jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key != 'bias', p)),",
           ('tests/test_optimizer.py',)),
    Mutant('sgd_weight_decay_doubled', 'simsiam_jax/optimizer.py',
           '  return optax.chain(optax.add_decayed_weights(optim.weight_decay),',
           '  return optax.chain(optax.add_decayed_weights(2 * optim.weight_decay),',
           (f'{PARITY}::test_five_float32_sgd_steps_at_the_official_lr_move_each_tensor_as_torch_'
            'does',)),
    Mutant('sgd_momentum_0.8', 'simsiam_jax/optimizer.py',
           '                     optax.sgd(schedule, momentum=optim.momentum))',
           '                     optax.sgd(schedule, momentum=0.8))',
           (f'{PARITY}::test_five_float32_sgd_steps_at_the_official_lr_move_each_tensor_as_torch_'
            'does',)),
    Mutant('linear_eval_drops_the_last_partial_batch', 'simsiam_jax/data/input_pipeline.py',
           'process_count=process_count, keep_last_partial_batch=True)',
           'process_count=process_count, keep_last_partial_batch=False)',
           ('tests/data/test_input_pipeline.py::test_linear_training_sees_every_image_each_epoch_'
            'the_last_batch_padded',)),
    Mutant('cached_linear_eval_drops_the_last_partial_batch',
           'simsiam_jax/evaluation/linear_eval.py',
           '      padding = local_batch - len(rows)\n',
           '      padding = local_batch - len(rows)\n      if padding:\n        continue\n',
           ('tests/evaluation/test_evaluation.py::test_cached_linear_training_sees_every_feature_'
            'each_epoch_the_last_batch_padded',)),
    Mutant('grayscale_0.5', 'configs/base.py',
           'aug.grayscale_prob = 0.2', 'aug.grayscale_prob = 0.5',
           ('tests/data/test_augmentations.py',)),
    Mutant('crop_scale_0.08', 'configs/base.py',
           'aug.crop_scale = (0.2, 1.0)', 'aug.crop_scale = (0.08, 1.0)',
           ('tests/data/test_augmentations.py',)),
    Mutant('grayscale_gets_the_blur_probability', 'simsiam_jax/data/augmentations.py',
           'random_grayscale(image, gray_seed, aug.grayscale_prob)',
           'random_grayscale(image, gray_seed, aug.blur_prob)',
           ('tests/data/test_augmentations.py',)),
    # The factor ranges both the host's and the device's jitter draw from.
    Mutant('brightness_range_doubled', 'simsiam_jax/data/__init__.py',
           '[1.0 + brightness, 1.0 + contrast', '[1.0 + 2 * brightness, 1.0 + contrast',
           ('tests/data/test_augmentations.py',
            f'{DEVICE_AUG_TESTS}::test_draws_span_the_recipes_ranges_and_every_jitter_order')),
    Mutant('knn_temperature_x2', 'simsiam_jax/evaluation/knn.py',
           'jnp.exp(similarities / temperature)', 'jnp.exp(similarities / (2 * temperature))',
           ('tests/evaluation/test_knn.py',)),
    Mutant('knn_k_minus_1', 'simsiam_jax/evaluation/knn.py',
           'jax.lax.top_k(similarities, min(k, similarities.shape[1]))',
           'jax.lax.top_k(similarities, min(k - 1, similarities.shape[1]))',
           ('tests/evaluation/test_knn.py',)),
    Mutant('predictor_hidden_is_the_projectors', 'simsiam_jax/models/simsiam.py',
           'hidden_dim=model_config.predictor_hidden_dim',
           'hidden_dim=model_config.projector_hidden_dim',
           ('tests/models/test_models.py',)),
    Mutant('projector_output_bn_affine', 'simsiam_jax/models/heads.py',
           'use_scale=affine,', 'use_scale=True,',
           ('tests/models/test_models.py',)),
    Mutant('stride2_padding_same', 'simsiam_jax/models/resnet.py',
           'padding = [((k - 1) // 2, (k - 1) // 2) for k in kernel_size]', "padding = 'SAME'",
           (f'{PARITY}::test_float32_features_z_p_and_loss_match',)),
    Mutant('bn_running_averages_dropped_on_resume', 'simsiam_jax/train.py',
           'state, start_step = restored',
           'state, start_step = restored[0].replace(batch_stats=state.batch_stats), restored[1]',
           ('tests/test_train_loop.py::test_resume_after_sigkill_continues_exactly_like_an_'
            'uninterrupted_run',)),
    Mutant('lars_bias_excluded', 'simsiam_jax/optimizer.py',
           'return jax.tree.map(scale, updates, params), state',
           'return jax.tree_util.tree_map_with_path(lambda path, g, p: g if path[-1].key == '
           "'bias' else scale(g, p), updates, params), state",
           (f'{PARITY}::test_linear_evaluation_steps_match_apex_larc',)),
    Mutant('momentum_after_the_lr', 'simsiam_jax/optimizer.py',
           'optax.trace(decay=momentum), optax.scale_by_learning_rate(learning_rate))',
           'optax.scale_by_learning_rate(learning_rate), optax.trace(decay=momentum))',
           (f'{PARITY}::test_linear_evaluation_steps_match_apex_larc',)),
    Mutant('top5_is_top4', 'simsiam_jax/evaluation/linear_eval.py',
           'jax.lax.top_k(logits, min(5, logits.shape[-1]))',
           'jax.lax.top_k(logits, min(4, logits.shape[-1]))',
           ('tests/evaluation/test_evaluation.py::test_top1_and_top5_count_hand_built_logits_and_skip_'
            'padding',)),
    Mutant('half_precision_ignored', 'simsiam_jax/train_state.py',
           'return jnp.bfloat16 if config.half_precision else jnp.float32',
           'return jnp.float32',
           ('tests/test_train_step.py::test_half_precision_convolves_in_bfloat16_and_keeps_'
            'float32_parameters',)),
    Mutant('asymmetric_2x_uses_one_pair', 'simsiam_jax/methods/simsiam.py',
           '2 * losses.num_view_pairs(config.loss_symmetry))', '2)',
           ('tests/studies/test_ablations.py::test_asymmetric_2x_trains_on_two_pairs_of_views_'
            'per_image',)),
    Mutant('hosts_read_the_same_shard', 'simsiam_jax/data/datasets.py',
           'tf.equal(dealt_to, process_index)', 'tf.equal(dealt_to, 0)',
           ('tests/test_multihost.py',)),
    Mutant('data_errors_escape_the_error_exit', 'simsiam_jax/cli.py',
           'except (app.UsageError, config_validation.ConfigError, DataError,',
           'except (app.UsageError, config_validation.ConfigError,',
           ('tests/test_bad_input.py',)),
    # Methods: one per method.
    Mutant('k_step_target_never_refreshed', 'simsiam_jax/methods/simsiam.py',
           'refresh = new_state.step % refresh_every == 0', 'refresh = new_state.step < 0',
           ('tests/methods/test_em_variants.py::test_k_step_target_is_refreshed_exactly_every_k_steps',)),
    Mutant('memory_bank_momentum_swapped', 'simsiam_jax/methods/simsiam.py',
           'momentum * bank[indices] + (1 - momentum) * current',
           '(1 - momentum) * bank[indices] + momentum * current',
           ('tests/methods/test_em_variants.py::test_memory_bank_updates_only_the_batchs_rows_with_'
            'momentum_m',)),
    Mutant('simclr_self_similarity_unmasked', 'simsiam_jax/losses.py',
           'a @ a.T / temperature - self_mask', 'a @ a.T / temperature',
           (f'{LOSSES_TESTS}::test_nt_xent_is_simclrs_add_contrastive_loss',)),
    Mutant('moco_key_momentum_swapped', 'simsiam_jax/methods/moco_v2.py',
           'config.moco_v2.momentum)}', '1 - config.moco_v2.momentum)}',
           (f'{METHODS_TESTS}::test_moco_key_encoder_moves_before_the_step_and_the_keys_enter_'
            'the_queue',)),
    Mutant('moco_queue_position_stuck', 'simsiam_jax/methods/moco_v2.py',
           'QUEUE_POSITION: (position + new_keys.shape[0])', 'QUEUE_POSITION: (position)',
           (f'{METHODS_TESTS}::test_moco_key_encoder_moves_before_the_step_and_the_keys_enter_'
            'the_queue',)),
    Mutant('byol_tau_constant', 'simsiam_jax/methods/byol.py',
           '(1 - tau_base) * (jnp.cos(math.pi * progress) + 1) / 2', '(1 - tau_base)',
           (f'{METHODS_TESTS}::test_byol_target_is_a_moving_average_with_a_cosine_tau',)),
    Mutant('byol_target_follows_the_pre_step_online', 'simsiam_jax/methods/byol.py',
           'common.encoder_part(new_state.params), tau)', 'common.encoder_part(state.params), tau)',
           (f'{METHODS_TESTS}::test_byol_target_is_a_moving_average_with_a_cosine_tau',)),
    Mutant('swav_prototypes_never_frozen', 'simsiam_jax/methods/swav.py',
           'return int(round(config.swav.freeze_prototypes_epochs * steps_per_epoch))',
           'return 0',
           (f'{METHODS_TESTS}::test_swav_prototypes_are_unit_rows_frozen_for_the_first_steps',)),
    Mutant('swav_codes_carry_gradient', 'simsiam_jax/methods/swav.py',
           'codes1, codes2 = (jax.lax.stop_gradient(losses.sinkhorn(',
           'codes1, codes2 = ((lambda x: x)(losses.sinkhorn(',
           (f'{LOSSES_TESTS}::test_swav_loss_is_main_swavs_with_sinkhorn_codes_as_constants',)),
    # Linear evaluation's resume and the multi-host lock.
    Mutant('linear_eval_resumes_with_the_first_batches', 'simsiam_jax/evaluation/linear_eval.py',
           'create_linear_train_iterator(config, start_step=start_step)',
           'create_linear_train_iterator(config, start_step=0)',
           ('tests/evaluation/test_evaluation.py::test_preempted_linear_eval_resumes_where_it_stopped_with_'
            'the_same_result',)),
    Mutant('linear_eval_forgets_earlier_evaluations', 'simsiam_jax/evaluation/linear_eval.py',
           "saved['classifier'], np.array(saved['evaluations'])",
           "saved['classifier'], evaluations",
           ('tests/evaluation/test_evaluation.py::test_preempted_linear_eval_resumes_where_it_stopped_with_'
            'the_same_result',)),
    Mutant('lock_failure_kept_by_process_0', 'simsiam_jax/workdir.py',
           'if jax.process_count() > 1:\n    taken', 'if False:\n    taken',
           ('tests/test_multihost.py::test_every_process_stops_when_the_workdir_is_locked',)),
    Mutant('projector_in_bfloat16', 'simsiam_jax/models/simsiam.py',
           'output_bn=projector_output_bn, dtype=head_dtype)',
           'output_bn=projector_output_bn, dtype=dtype)',
           ('tests/test_train_step.py::test_half_precision_convolves_in_bfloat16_and_keeps_'
            'float32_parameters',)),
    Mutant('cpu_flags_not_set', 'simsiam_jax/scale/xla_flags.py',
           "  environ['XLA_FLAGS'] = with_cpu_defaults(",
           "  environ['XLA_FLAGS_'] = with_cpu_defaults(",
           ('tests/scale/test_xla_flags.py',)),
    Mutant('encoder_in_train_mode', 'simsiam_jax/pretrained.py',
           'outputs = network.apply(variables, images.astype(dtype), train=False,',
           'outputs = network.apply(variables, images.astype(dtype), train=True,',
           ('tests/test_pretrained.py::test_the_encoder_gives_the_knn_evaluators_features',)),
    Mutant('pod_plan_misses_tuple_collectives', 'simsiam_jax/scale/pod_plan.py',
           r"[\w.\-]+\s*=\s*(.*?)\s+(' + '|'", r"[\w.\-]+\s*=\s*([^=]*?)\s+(' + '|'",
           ('tests/scale/test_pod_plan.py::test_collectives_their_bytes_and_kind_are_read_from_'
            'compiled_hlo',)),
    Mutant('pod_plan_counts_on_chip_memory_as_hbm', 'simsiam_jax/scale/pod_plan.py',
           "space = int(next(iter(_SPACE.findall(layout)), 0))", "space = 0",
           ('tests/scale/test_pod_plan.py::test_the_hbm_share_leaves_out_buffers_in_on_chip_'
            'memory',)),
    Mutant('pod_plan_fit_ignores_the_chips_hbm', 'simsiam_jax/scale/pod_plan.py',
           "return compiled is not None and hbm_bytes(compiled)['total'] <= chip.hbm_bytes",
           'return compiled is not None',
           ('tests/scale/test_pod_plan.py::test_a_batch_too_large_for_the_chip_is_a_row_with_the_'
            'batch_that_fits',)),
    Mutant('remat_renames_the_blocks', 'simsiam_jax/models/resnet.py',
           "name=f'{self.block_cls.__name__}_{index}')(x)", ')(x)',
           ('tests/models/test_models.py::test_remat_recomputes_the_same_network',)),
    Mutant('batch_norm_shift_passes_gradient', 'simsiam_jax/models/layers.py',
           '  shift = jax.lax.stop_gradient(shift).astype(x.dtype)',
           '  shift = shift.astype(x.dtype)',
           ('tests/models/test_batch_norm.py::test_no_gradient_flows_through_the_shift',)),
    Mutant('batch_norm_unshifted_one_pass', 'simsiam_jax/models/layers.py',
           '  shifted = x - shift\n', '  shifted = x\n  shift = 0 * shift\n',
           ('tests/models/test_batch_norm.py::test_the_shift_keeps_float32_digits_a_large_mean_'
            'would_cancel',)),
    Mutant('batch_norm_two_passes_for_bfloat16', 'simsiam_jax/models/layers.py',
           '    one_pass = x.dtype == jnp.bfloat16', '    one_pass = False',
           ('tests/models/test_batch_norm.py::test_bfloat16_activations_take_one_pass_and_'
            'float32_two',)),
    Mutant('import_reads_the_dataset', 'simsiam_jax/convert.py',
           'input_pipeline.declared_pretrain_examples(config)',
           'input_pipeline.num_pretrain_examples(config)',
           ('tests/test_convert.py::test_an_official_checkpoint_imports_with_the_imagenet_config_'
            'and_no_data',)),
    Mutant('pod_plan_gpu_ring_ignores_the_network', 'simsiam_jax/scale/pod_plan.py',
           'return min(self.chip.all_reduce_bytes_per_s, hardware.H100_NETWORK_BYTES_PER_S)',
           'return self.chip.all_reduce_bytes_per_s',
           ('tests/scale/test_pod_plan.py::test_gpu_slices_are_hosts_of_8_with_nccl_ring_costs',)),
    Mutant('byol_lars_lr_before_momentum', 'simsiam_jax/optimizer.py',
           '  return _lars(optim, schedule, lr_after_momentum=True)',
           '  return _lars(optim, schedule, lr_after_momentum=False)',
           (f'{OPTIMIZERS_TESTS}::test_each_step_is_the_official_optimizers_while_the_lr_changes'
            '[byol_lars]',)),
    Mutant('lars_decays_biases', 'simsiam_jax/optimizer.py',
           'optax.add_decayed_weights(optim.weight_decay, mask=_is_matrix),',
           'optax.add_decayed_weights(optim.weight_decay),',
           (f'{OPTIMIZERS_TESTS}::test_each_step_is_the_official_optimizers_while_the_lr_changes'
            '[simclr_lars]',)),
    Mutant('swav_larc_is_simclrs_lars', 'simsiam_jax/optimizer.py',
           "                          'larc': larc}",
           "                          'larc': simclr_lars}",
           (f'{OPTIMIZERS_TESTS}::test_each_step_is_the_official_optimizers_while_the_lr_changes'
            '[larc]',)),
    # Each method's loss against its official code, and its defaults against their sources.
    Mutant('simsiam_target_not_normalized', 'simsiam_jax/losses.py',
           'l2_normalize(at_least_float32(p)) * l2_normalize(at_least_float32(z))',
           'l2_normalize(at_least_float32(p)) * at_least_float32(z)',
           (f'{LOSSES_TESTS}::test_simsiam_loss_is_main_simsiams_with_z_detached',)),
    Mutant('moco_logits_times_temperature', 'simsiam_jax/losses.py',
           'jnp.concatenate([positives, negatives], axis=1) / temperature)',
           'jnp.concatenate([positives, negatives], axis=1) * temperature)',
           (f'{LOSSES_TESTS}::test_moco_loss_is_the_builders_logits_and_cross_entropy',)),
    Mutant('byol_targets_carry_gradient', 'simsiam_jax/methods/byol.py',
           'z1_target, z2_target = jax.lax.stop_gradient((z1_target, z2_target))',
           'z1_target, z2_target = (z1_target, z2_target)',
           (f'{LOSSES_TESTS}::test_byol_loss_is_the_experiments_repr_loss',)),
    Mutant('simsiam_lr_0.1', 'configs/imagenet.py',
           'config.optim.base_lr = 0.05', 'config.optim.base_lr = 0.1', (DEFAULTS_TESTS,)),
    Mutant('linear_lr_0.02', 'configs/base.py',
           'linear.base_lr = 0.1', 'linear.base_lr = 0.02', (DEFAULTS_TESTS,)),
    Mutant('bank_momentum_0.9', 'configs/base.py',
           'simsiam.bank_momentum = 0.8', 'simsiam.bank_momentum = 0.9', (DEFAULTS_TESTS,)),
    Mutant('simclr_temperature_0.5', 'configs/simclr.py',
           'config.simclr.temperature = 0.1', 'config.simclr.temperature = 0.5',
           (DEFAULTS_TESTS,)),
    Mutant('moco_temperature_0.07', 'configs/moco_v2.py',
           'config.moco_v2.temperature = 0.2', 'config.moco_v2.temperature = 0.07',
           (DEFAULTS_TESTS,)),
    Mutant('byol_tau_of_1000_epochs', 'configs/byol.py',
           'config.byol.tau_base = 0.99', 'config.byol.tau_base = 0.996', (DEFAULTS_TESTS,)),
    Mutant('swav_epsilon_0.03', 'configs/base.py',
           'swav.epsilon = 0.05', 'swav.epsilon = 0.03', (DEFAULTS_TESTS,)),
    # Device-side augmentation (data/device_augmentations.py).
    Mutant('device_hue_always_last', DEVICE_AUG,
           'hue_at = jnp.argmax(order == HUE)', 'hue_at = HUE',
           (f'{DEVICE_AUG_TESTS}::test_a_whole_view_is_the_host_recipe_with_the_same_draws',)),
    Mutant('device_hue_turned_the_other_way', DEVICE_AUG,
           'return hsv_to_rgb((hue + delta) % 1.0, saturation, value)',
           'return hsv_to_rgb((hue - delta) % 1.0, saturation, value)',
           (f'{DEVICE_AUG_TESTS}::test_each_jitter_op_gives_the_host_ops_output_to_one_level',)),
    Mutant('device_contrast_around_the_pixels_luma', DEVICE_AUG,
           'jnp.where(op == CONTRAST, jnp.mean(gray),', 'jnp.where(op == CONTRAST, gray,',
           (f'{DEVICE_AUG_TESTS}::test_each_jitter_op_gives_the_host_ops_output_to_one_level',)),
    Mutant('device_blur_without_reflection', DEVICE_AUG, "mode='reflect')", "mode='edge')",
           (f'{DEVICE_AUG_TESTS}::test_grayscale_and_blur_give_the_host_ops_output_to_one_level',)),
    Mutant('tpu_blurs_by_shifted_sums', DEVICE_AUG, 'tpu=blur_by_convolutions,',
           'tpu=blur_by_shifted_sums,',
           (f'{DEVICE_AUG_TESTS}::test_the_tpu_blurs_by_convolutions_and_the_other_platforms_'
            'by_shifted_sums',)),
    Mutant('device_grayscale_prob_is_blurs', DEVICE_AUG,
           'grayscale=u[9] < aug.grayscale_prob,', 'grayscale=u[9] < aug.blur_prob,',
           (f'{DEVICE_AUG_TESTS}::test_draws_span_the_recipes_ranges_and_every_jitter_order',)),
    Mutant('device_draws_ignore_the_row', DEVICE_AUG,
           'return jax.vmap(lambda row: jax.random.fold_in(step_key, row))(jnp.arange(batch_size))',
           'return jax.vmap(lambda row: step_key)(jnp.arange(batch_size))',
           (f'{DEVICE_AUG_TESTS}::test_a_batch_is_augmented_alike_on_any_mesh_and_by_step_row_'
            'and_view',)),
    Mutant('device_draws_ignore_the_step', 'simsiam_jax/train.py',
           'return method_step(state, augment(batch, state.step))',
           'return method_step(state, augment(batch, 0))',
           (f'{DEVICE_AUG_TESTS}::test_the_device_mode_step_is_the_method_step_on_device_'
            'augmented_crops',)),
    Mutant('device_mode_augments_on_the_host_too', 'simsiam_jax/data/input_pipeline.py',
           'decoding(config.data), augment=on_host)',
           'decoding(config.data), augment=True)',
           (f'{DEVICE_AUG_TESTS}::test_device_mode_ships_the_host_modes_crops',)),
    Mutant('auto_augments_on_tpus_on_the_device', 'simsiam_jax/data/__init__.py',
           "AUTO_AUGMENT_ON = {'gpu': 'device', 'tpu': 'host', 'cpu': 'host'}",
           "AUTO_AUGMENT_ON = {'gpu': 'device', 'tpu': 'device', 'cpu': 'host'}",
           (f'{DEVICE_AUG_TESTS}::test_auto_augments_on_the_device_on_gpus_only',)),
    Mutant('pipeline_takes_auto_for_device', 'simsiam_jax/data/input_pipeline.py',
           "on_host = augment_on(config) == 'host'",
           "on_host = config.data.augment_on == 'host'",
           (f'{DEVICE_AUG_TESTS}::test_auto_augments_on_the_device_on_gpus_only',)),
)


def copy_tree(destination: str):
  """The files git knows (tracked, and untracked but not ignored) copied to `destination`."""
  listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=True)
  for path in listed.stdout.splitlines():
    source = os.path.join(REPO_ROOT, path)
    if os.path.isfile(source):
      os.makedirs(os.path.dirname(os.path.join(destination, path)), exist_ok=True)
      shutil.copy2(source, os.path.join(destination, path))


def run_tests(tree: str, tests, *, stop_at_first_failure: bool, env: dict,
              processes: int = 1) -> tuple[int, list[str], str]:
  """(pytest's exit status, the failed test ids, its output tail)."""
  command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-rf', *tests]
  if processes > 1:
    command += ['-n', str(processes), '--dist', 'loadscope']
  if stop_at_first_failure:
    command.insert(3, '-x')
  result = subprocess.run(command, cwd=tree, capture_output=True, text=True, env=env)
  failed = re.findall(r'^FAILED (\S+)', result.stdout, flags=re.MULTILINE)
  return result.returncode, failed, (result.stdout + result.stderr)[-3000:]


class StaleMutant(Exception):
  pass


def read_source(tree: str, mutant: Mutant) -> str:
  """The text of the mutant's file, checked to hold its original piece exactly once."""
  with open(os.path.join(tree, mutant.path)) as f:
    source = f.read()
  count = source.count(mutant.original)
  if count != 1:
    raise StaleMutant(f'{mutant.name}: {mutant.original!r} occurs {count} times in '
                      f'{mutant.path}, not once')
  return source


def stale_mutants(tree: str = REPO_ROOT, mutants=MUTANTS) -> list[str]:
  """Why each mutant that no longer applies in `tree` does not: its piece of source is not
  there exactly once, or one of its test files is gone."""
  problems = []
  for mutant in mutants:
    try:
      read_source(tree, mutant)
    except (StaleMutant, FileNotFoundError) as e:
      problems.append(str(e))
    problems += [f'{mutant.name}: no test file {test.split("::")[0]}' for test in mutant.tests
                 if not os.path.isfile(os.path.join(tree, test.split('::')[0]))]
  return problems


def check(tree: str, mutant: Mutant, env: dict) -> tuple[str, str, float]:
  """(verdict, the test that caught it or why not, seconds)."""
  started = time.perf_counter()
  original = read_source(tree, mutant)
  with open(os.path.join(tree, mutant.path), 'w') as f:
    f.write(original.replace(mutant.original, mutant.mutated))
  try:
    returncode, failed, output = run_tests(tree, mutant.tests, stop_at_first_failure=True,
                                           env=env)
  finally:
    with open(os.path.join(tree, mutant.path), 'w') as f:
      f.write(original)
  seconds = time.perf_counter() - started
  if returncode == 1 and failed:
    return 'caught', failed[0], seconds
  if returncode == 0:
    return 'MISSED', 'all selected tests pass', seconds
  # Collection errors and the like say nothing about the tests' strength.
  return 'ERROR', f'pytest exit status {returncode}: {output.splitlines()[-1:]}', seconds


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--mutants', default='',
                      help='comma-separated names of MUTANTS to run (default: all)')
  parser.add_argument('--list', action='store_true', help='list the mutants and exit')
  parser.add_argument('--skip_baseline', action='store_true',
                      help='do not run the selected tests on the unmutated tree first')
  parser.add_argument('--fresh', action='store_true',
                      help='only check that every mutant applies, then exit')
  parser.add_argument('--jobs', type=int, default=1,
                      help='mutants checked at once, each in its own copy of the tree (the '
                      'tests compile on about one core each: 2 on a 2-core machine)')
  args = parser.parse_args(argv)
  if args.fresh:
    problems = stale_mutants()
    for problem in problems:
      print(f'stale: {problem}', file=sys.stderr)
    print(f'{len(MUTANTS) - len(problems)}/{len(MUTANTS)} mutants apply.')
    return 2 if problems else 0
  if args.list:
    for mutant in MUTANTS:
      print(f'{mutant.name:40s} {mutant.path}  ->  {" ".join(mutant.tests)}')
    return 0
  names = [n for n in args.mutants.split(',') if n]
  unknown = sorted(set(names) - {m.name for m in MUTANTS})
  if unknown:
    parser.error(f'unknown mutants {unknown}; --list shows them')
  selected = [m for m in MUTANTS if not names or m.name in names]

  with tempfile.TemporaryDirectory(prefix='mutation_check_') as scratch:
    trees = [os.path.join(scratch, f'tree{i}') for i in range(max(args.jobs, 1))]
    for tree in trees:
      copy_tree(tree)
    # Shared with the test runs of the repository (tests/conftest.py): most programs the
    # mutants leave alone are compiled already.
    env = {**os.environ,
           'JAX_COMPILATION_CACHE_DIR': os.path.join(REPO_ROOT, '.cache', 'jax')}
    problems = stale_mutants(trees[0], selected)  # All must apply before any time is spent.
    if problems:
      print(f'error: {"; ".join(problems)}', file=sys.stderr)
      return 2
    if not args.skip_baseline:
      tests = sorted({t for m in selected for t in m.tests})
      started = time.perf_counter()
      returncode, failed, output = run_tests(trees[0], tests, stop_at_first_failure=False,
                                             env=env, processes=len(trees))
      print(f'baseline: the {len(tests)} selected test targets on the unmutated tree: '
            f'exit status {returncode} ({time.perf_counter() - started:.0f}s)', flush=True)
      if returncode != 0:
        print(f'error: the unmutated tree fails {failed or output}', file=sys.stderr)
        return 2
    free_trees = queue.Queue()
    for tree in trees:
      free_trees.put(tree)

    def check_in_a_free_tree(mutant):
      tree = free_trees.get()
      try:
        return check(tree, mutant, env)
      finally:
        free_trees.put(tree)

    results = []
    with concurrent.futures.ThreadPoolExecutor(len(trees)) as pool:
      for mutant, (verdict, detail, seconds) in zip(selected,
                                                    pool.map(check_in_a_free_tree, selected)):
        results.append(verdict)
        print(f'{mutant.name:40s} {verdict:6s} {seconds:5.0f}s  {detail}', flush=True)
  missed = len(results) - results.count('caught')
  print(f'{results.count("caught")}/{len(results)} mutants caught.')
  return 1 if missed else 0


if __name__ == '__main__':
  sys.exit(main())
