"""PPO that carries a constant-size recurrent state between steps and trains through it.

Rollouts step every env with its state; the buffer keeps the state once per chunk of ``bptt_len`` steps.
Training replays whole chunks from their stored states, time-major, one forward over ``(T, S)`` per
minibatch, zeroing the state of an env at every step where its episode began. Running statistics inside
the policy (:mod:`tmem_agents.running_standardize`) accumulate over the rollout's steps and change after
the update that trains on it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from tensordict import TensorDict

from tmem_agents.algos.buffer import RecurrentRolloutBuffer
from tmem_agents.policies.recurrent_policy import RecurrentActorCriticPolicy, check_lags
from tmem_agents.running_standardize import commit_statistics, tracking_statistics


class NonFiniteError(ValueError):
    """An observation or reward from the env is NaN or infinite."""


def check_finite(what: str, value: np.ndarray | dict[str, np.ndarray], timestep: int) -> None:
    """Raise :class:`NonFiniteError` naming the env index and the timestep if ``value`` has NaN or inf."""
    items = value.items() if isinstance(value, dict) else [("", value)]
    for key, array in items:
        array = np.asarray(array)
        if not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all():
            continue
        bad = ~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
        env = int(np.flatnonzero(bad)[0])
        label = f"{what}[{key!r}]" if key else what
        raise NonFiniteError(
            f"non-finite {label} from env {env} at timestep {timestep}: {array[env].ravel()[:8]}... "
            "Fix the env or wrap it (e.g. VecNormalize, clipping); pass check_finite=False to skip this check"
        )


def check_loss_coef(name: str, coef: float) -> None:
    """``ValueError`` unless an auxiliary loss's weight ``coef`` (the argument ``name``) is ``>= 0``."""
    if not coef >= 0:
        raise ValueError(f"{name} must be >= 0 (0 turns the loss off), got {coef!r}")


def check_reconstruction(coef: float, lags: Sequence[int], bptt_len: int) -> tuple[int, ...]:
    """The reconstruction loss's lags as a tuple; ``ValueError`` unless ``coef >= 0``, the lags are distinct ints
    >= 1 and, with ``coef > 0``, there is one at least and each is ``< bptt_len``."""
    check_loss_coef("reconstruction_coef", coef)
    lags = check_lags(lags)
    if coef > 0 and (not lags or max(lags) >= bptt_len):
        raise ValueError(
            f"reconstruction_lags {lags!r} must be non-empty and each < bptt_len ({bptt_len}): "
            "training sequences hold bptt_len steps"
        )
    return lags


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the steps where ``mask`` is 1 (padded steps may hold anything, inf included)."""
    return torch.where(mask > 0, x, 0.0).sum() / mask.sum().clamp_min(1.0)


class MemoryPPO(OnPolicyAlgorithm):
    """PPO with a recurrent state (Tensor Memory, LSTM, GRU, frame stack or none) carried between steps.

    The arguments of SB3's ``PPO`` (but for gSDE and a custom rollout buffer), plus:

    Args:
        bptt_len: steps per stored chunk: the state is stored once per chunk and training backpropagates
            through at most this many steps.
        check_finite: stop with an error naming the env and the timestep when an observation or a reward
            is NaN or infinite.
        reconstruction_coef: weight of the auxiliary loss that decodes earlier observations from the
            features (:meth:`RecurrentActorCriticPolicy.reconstruction_loss`); 0 turns it off.
        reconstruction_lags: how many steps back the decoded observations lie (each ``< bptt_len``).
        reconstruction_standardize: score the decoded observations standardized per dimension over the
            minibatch, so that large-scale dimensions do not drown the others (the decoded frames of
            ``image_reconstruction_coef`` too).
        image_reconstruction_coef: weight of the auxiliary loss that decodes each frame from its image encoder's
            output (:meth:`RecurrentActorCriticPolicy.image_reconstruction_loss`); 0 turns it off.

    ``batch_size`` counts steps; a minibatch holds ``batch_size // bptt_len`` whole chunks.
    ``initial_ratio_error`` is the largest ``|ratio - 1|`` in the first minibatch of the latest ``train()``
    (it should be 0 up to float error: the replay reproduces the rollout).
    ``predict(obs, state, episode_start, deterministic)`` returns ``(actions, state)``.
    """

    policy_aliases: ClassVar[dict[str, type[RecurrentActorCriticPolicy]]] = {
        "MlpPolicy": RecurrentActorCriticPolicy,
        "CnnPolicy": RecurrentActorCriticPolicy,
        "MultiInputPolicy": RecurrentActorCriticPolicy,
    }

    def __init__(
        self,
        policy: str | type[RecurrentActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 128,
        batch_size: int = 256,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        bptt_len: int = 32,
        check_finite: bool = True,
        reconstruction_coef: float = 0.0,
        reconstruction_lags: tuple[int, ...] = (1,),
        reconstruction_standardize: bool = False,
        image_reconstruction_coef: float = 0.0,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        for name, value, minimum in (
            ("n_steps", n_steps, 1),
            ("batch_size", batch_size, 1),
            ("n_epochs", n_epochs, 1),
            ("bptt_len", bptt_len, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if batch_size < bptt_len:
            raise ValueError(f"batch_size ({batch_size}) counts steps and must be >= bptt_len ({bptt_len})")
        if bptt_len > n_steps:
            raise ValueError(
                f"bptt_len ({bptt_len}) must be <= n_steps ({n_steps}): each chunk is cut from one rollout of "
                "n_steps steps per env"
            )
        reconstruction_lags = check_reconstruction(reconstruction_coef, reconstruction_lags, bptt_len)
        check_loss_coef("image_reconstruction_coef", image_reconstruction_coef)
        for name, argument in (
            ("reconstruction_lags", "reconstruction_lags"),
            ("image_reconstruction", "image_reconstruction_coef"),
        ):
            if name in (policy_kwargs or {}):
                raise ValueError(f"{name} is set by MemoryPPO's own {argument}, not in policy_kwargs")
        if batch_size % bptt_len:
            warnings.warn(
                f"batch_size {batch_size} is not a multiple of bptt_len {bptt_len}: minibatches hold "
                f"{batch_size // bptt_len} chunks ({batch_size // bptt_len * bptt_len} steps)",
                stacklevel=2,
            )
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=False,
            sde_sample_freq=-1,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self.clip_range_vf = clip_range_vf
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl
        self.bptt_len = bptt_len
        self.check_finite = check_finite
        self.reconstruction_coef = float(reconstruction_coef)
        self.reconstruction_lags = reconstruction_lags
        self.reconstruction_standardize = bool(reconstruction_standardize)
        self.image_reconstruction_coef = float(image_reconstruction_coef)
        self._last_state: TensorDict | None = None
        self.initial_ratio_error: float | None = None
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        lags = self.reconstruction_lags if self.reconstruction_coef > 0 else ()
        self.policy = self.policy_class(
            self.observation_space,
            self.action_space,
            self.lr_schedule,
            reconstruction_lags=lags,
            image_reconstruction=self.image_reconstruction_coef > 0,
            **self.policy_kwargs,
        )
        self.policy = self.policy.to(self.device)
        self.rollout_buffer = RecurrentRolloutBuffer(
            self.n_steps,
            self.n_envs,
            self.bptt_len,
            self.observation_space,
            self.action_space,
            self.device,
            self.gamma,
            self.gae_lambda,
        )
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_state"]

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        fresh_obs = reset_num_timesteps or self._last_obs is None
        result = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        if fresh_obs or self._last_state is None:
            self._last_state = self.policy.initial_state(self.n_envs)
        if self.check_finite:
            check_finite("observation", self._last_obs, self.num_timesteps)
        return result

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RecurrentRolloutBuffer, n_rollout_steps: int
    ) -> bool:
        if self._last_obs is None or self._last_state is None:
            raise RuntimeError("collect_rollouts needs the env reset and the state initialised: call learn()")
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        state = self._last_state
        for _ in range(n_rollout_steps):
            starts = torch.as_tensor(self._last_episode_starts, dtype=torch.float32, device=self.device)
            with torch.no_grad(), tracking_statistics(self.policy):
                actions, values, log_probs, new_state = self.policy(
                    obs_as_tensor(self._last_obs, self.device), state, starts
                )
            actions = actions.cpu().numpy()
            clipped = actions
            if isinstance(self.action_space, spaces.Box):
                clipped = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped)
            self.num_timesteps += env.num_envs
            if self.check_finite:
                check_finite("observation", new_obs, self.num_timesteps)
                check_finite("reward", rewards, self.num_timesteps)
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            # a time-limit truncation is bootstrapped with the critic's value of the terminal observation,
            # seen from the state the env had reached
            for idx, done in enumerate(dones):
                terminal_obs = infos[idx].get("terminal_observation")
                if done and terminal_obs is not None and infos[idx].get("TimeLimit.truncated", False):
                    obs = self.policy.obs_to_tensor(terminal_obs)[0]
                    with torch.no_grad():
                        value = self.policy.predict_values(
                            obs, new_state[idx : idx + 1], torch.zeros(1, device=self.device)
                        )
                    rewards[idx] += self.gamma * value.item()
            rollout_buffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs, state)
            self._last_obs = new_obs
            self._last_episode_starts = dones
            self._last_state = state = new_state
        with torch.no_grad():
            starts = torch.as_tensor(dones, dtype=torch.float32, device=self.device)
            last_values = self.policy.predict_values(obs_as_tensor(new_obs, self.device), state, starts)
        rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def train(self) -> None:
        """PPO epochs over minibatches of whole chunks, each replayed from its stored state."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)
        sequences_per_batch = max(1, self.batch_size // self.bptt_len)
        entropy_losses, pg_losses, value_losses, clip_fractions, approx_kls = [], [], [], [], []
        reconstruction_losses, image_reconstruction_losses = [], []
        self.initial_ratio_error = None
        continue_training = True
        loss = torch.zeros(())
        for epoch in range(self.n_epochs):
            for batch in self.rollout_buffer.sequences(sequences_per_batch):
                values, log_prob, entropy, features, encoded_images = self.policy.evaluate_sequences(
                    batch.observations, batch.actions, batch.state, batch.episode_starts
                )
                mask = batch.mask
                advantages = batch.advantages
                if self.normalize_advantage and mask.sum() > 1:
                    mean = masked_mean(advantages, mask)
                    std = masked_mean((advantages - mean) ** 2, mask).sqrt()
                    advantages = (advantages - mean) / (std + 1e-8)
                log_ratio = log_prob - batch.old_log_prob
                ratio = torch.exp(log_ratio)
                if self.initial_ratio_error is None:
                    self.initial_ratio_error = float(torch.where(mask > 0, (ratio.detach() - 1).abs(), 0.0).max())
                policy_loss = -masked_mean(
                    torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)), mask
                )
                if clip_range_vf is not None:
                    values = batch.old_values + torch.clamp(values - batch.old_values, -clip_range_vf, clip_range_vf)
                value_loss = masked_mean(F.mse_loss(batch.returns, values, reduction="none"), mask)
                entropy_loss = -masked_mean(entropy if entropy is not None else -log_prob, mask)
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                if self.reconstruction_coef > 0:
                    reconstruction_loss = self.policy.reconstruction_loss(
                        batch.observations, features, batch.episode_starts, mask, self.reconstruction_standardize
                    )
                    loss = loss + self.reconstruction_coef * reconstruction_loss
                    reconstruction_losses.append(reconstruction_loss.item())
                if self.image_reconstruction_coef > 0:
                    image_loss = self.policy.image_reconstruction_loss(
                        batch.observations, encoded_images, mask, self.reconstruction_standardize
                    )
                    loss = loss + self.image_reconstruction_coef * image_loss
                    image_reconstruction_losses.append(image_loss.item())
                with torch.no_grad():
                    approx_kl = masked_mean((ratio - 1) - log_ratio, mask).item()
                pg_losses.append(policy_loss.item())
                value_losses.append(value_loss.item())
                entropy_losses.append(entropy_loss.item())
                clip_fractions.append(masked_mean(((ratio - 1).abs() > clip_range).float(), mask).item())
                approx_kls.append(approx_kl)
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl:.2f}")
                    break
                self.policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break
        commit_statistics(self.policy)
        data = self.rollout_buffer.data
        explained_var = explained_variance(
            data["values"].flatten().cpu().numpy(), data["returns"].flatten().cpu().numpy()
        )
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kls))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        if reconstruction_losses:
            self.logger.record("train/reconstruction_loss", np.mean(reconstruction_losses))
        if image_reconstruction_losses:
            self.logger.record("train/image_reconstruction_loss", np.mean(image_reconstruction_losses))
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/initial_ratio_error", self.initial_ratio_error)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str = "MemoryPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> MemoryPPO:
        return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
