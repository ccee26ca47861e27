"""Actor-critic policy whose features come from a recurrent extractor carrying a state between steps."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple, NoReturn

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import (
    get_flattened_obs_dim,
    is_image_space,
    is_image_space_channels_first,
    preprocess_obs,
)
from tensordict import TensorDict
from torch import nn
from torch.nn import functional as F

from tmem_agents.policies.base import Obs, RecurrentFeaturesExtractor, map_obs, obs_batch_size
from tmem_agents.policies.tensor_memory_extractor import TensorMemoryExtractor
from tmem_agents.policies.tokenizers import image_chw
from tmem_agents.running_standardize import RunningWhiten


class SequenceEvaluation(NamedTuple):
    """Outputs of :meth:`RecurrentActorCriticPolicy.evaluate_sequences`, each over ``(T, B)`` steps."""

    values: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor | None
    features: torch.Tensor  # the actor's features (T, B, F)
    encoded_images: dict[str | None, torch.Tensor]  # with image_reconstruction, each image encoder's output (T, B, E)


RECONSTRUCTED_IMAGE_SIDE = 16  # images are decoded average-pooled to at most 16 x 16 pixels per channel
STANDARDIZE_EPS, STANDARDIZE_CLIP = 1e-8, 10.0  # a standardized reconstruction target: VecNormalize's defaults


def _pooled_shape(space: spaces.Box) -> tuple[int, int, int]:
    """``(channels, height, width)`` an image space is decoded at by the reconstruction loss."""
    channels, height, width = image_chw(space)
    return channels, min(height, RECONSTRUCTED_IMAGE_SIDE), min(width, RECONSTRUCTED_IMAGE_SIDE)


def _subspaces(space: gym.Space) -> dict[str | None, gym.Space]:
    """The entries of a dict space by sorted key, or ``{None: space}``."""
    if isinstance(space, spaces.Dict):
        return {key: space.spaces[key] for key in sorted(space.spaces)}
    return {None: space}


def _pooled_image(x: torch.Tensor, space: spaces.Box) -> torch.Tensor:
    """Preprocessed images ``(N, C, H, W)`` or ``(N, H, W, C)`` average-pooled as the reconstruction losses decode
    them -> ``(N, C * h * w)``."""
    if not is_image_space_channels_first(space):
        x = x.movedim(-1, -3)
    return F.adaptive_avg_pool2d(x.float(), _pooled_shape(space)[1:]).flatten(1)


def _standardized(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``target`` ``(T, B, D)`` standardized per dimension over the steps where ``mask`` ``(T, B)`` is 1 and clipped to
    ``[-10, 10]``, as VecNormalize treats observations."""
    rows = target[mask > 0]
    scale = rows.var(0, unbiased=False).add(STANDARDIZE_EPS).sqrt()
    return ((target - rows.mean(0)) / scale).clamp(-STANDARDIZE_CLIP, STANDARDIZE_CLIP)


def _head_name(key: str | None) -> str:
    """The ``image_reconstruction_head`` entry of an observation key (``None``: an image observation)."""
    return "image" if key is None else key


def _observation_dim(space: gym.Space) -> int:
    """Length of the reconstruction target of one observation: a flattened vector (or dict entries), with each
    image average-pooled to at most ``RECONSTRUCTED_IMAGE_SIDE`` pixels a side."""
    return sum(
        int(np.prod(_pooled_shape(sub))) if is_image_space(sub, check_channels=False) else get_flattened_obs_dim(sub)
        for sub in _subspaces(space).values()
    )


def reconstruction_target(space: gym.Space, obs: Obs) -> torch.Tensor:
    """What the reconstruction head decodes: preprocessed observations ``(N, ...)`` -> ``(N, obs_dim)``.

    Vectors (one-hot for discrete spaces) are flattened; an image ``(N, C, H, W)`` or ``(N, H, W, C)``, already
    scaled to ``[0, 1]``, is average-pooled to at most ``RECONSTRUCTED_IMAGE_SIDE`` pixels a side, so that a
    linear head decodes where things were without a decoder network. Dict entries are concatenated by sorted key.
    """
    parts = []
    for key, sub in _subspaces(space).items():
        x = (obs if key is None else obs[key]).float()
        parts.append(_pooled_image(x, sub) if is_image_space(sub, check_channels=False) else x.flatten(1))
    return torch.cat(parts, dim=-1)


def check_lags(lags: Sequence[int]) -> tuple[int, ...]:
    """``lags`` as a tuple of ints, or ``ValueError`` unless they are distinct integers >= 1."""
    message = f"reconstruction_lags must be distinct ints >= 1, got {lags!r}"
    try:
        values = tuple(operator.index(lag) for lag in lags if not isinstance(lag, bool))
    except TypeError:
        raise ValueError(message) from None
    if len(values) != len(lags) or min(values, default=1) < 1 or len(set(values)) < len(values):
        raise ValueError(message)
    return values


class RecurrentActorCriticPolicy(ActorCriticPolicy):
    """SB3 ``ActorCriticPolicy`` over a :class:`RecurrentFeaturesExtractor`.

    The state is a ``TensorDict(batch_size=[n_envs])`` with the extractor's state under ``"pi"``, and, when
    the extractor is not shared, the critic's own under ``"vf"``. The critic always sees a memory trained
    by the value loss: the shared extractor by default, or its own.

    Args:
        reconstruction_lags: with lags ``(l_1, ...)``, a linear ``reconstruction_head`` decodes from the actor's
            features at step ``t`` the observations of steps ``t - l_1, ...`` of the same episode and stored
            sequence (:meth:`reconstruction_loss`, an auxiliary loss that asks the memory to keep what it saw);
            images are decoded average-pooled (:func:`reconstruction_target`).
        image_reconstruction: a linear ``image_reconstruction_head`` decodes each frame, average-pooled as above,
            from its image encoder's output (the actor's extractor's
            :meth:`~tmem_agents.policies.base.RecurrentFeaturesExtractor.image_encoders`)
            (:meth:`image_reconstruction_loss`, an auxiliary loss that teaches the encoder to see what a frame
            shows, before and whatever the memory keeps of it).
        whiten_features: pass each extractor's features through a
            :class:`~tmem_agents.running_standardize.RunningWhiten` before the heads (and the reconstruction
            head), so that every direction of the features, the memory's included, reaches them at unit scale.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        lr_schedule: Any,
        features_extractor_class: type[RecurrentFeaturesExtractor] = TensorMemoryExtractor,
        reconstruction_lags: Sequence[int] = (),
        image_reconstruction: bool = False,
        whiten_features: bool = False,
        **kwargs: Any,
    ) -> None:
        self.reconstruction_lags = check_lags(reconstruction_lags)
        self.image_reconstruction = bool(image_reconstruction)
        self.whiten_features = bool(whiten_features)
        if not (
            isinstance(features_extractor_class, type)
            and issubclass(features_extractor_class, RecurrentFeaturesExtractor)
        ):
            raise TypeError(
                f"features_extractor_class must be a RecurrentFeaturesExtractor subclass (e.g. TensorMemoryExtractor, "
                f"LSTMExtractor, StatelessExtractor), got {features_extractor_class!r}"
            )
        adam = kwargs.get("optimizer_class", torch.optim.Adam) is torch.optim.Adam
        if adam and kwargs.get("optimizer_kwargs") is None:
            # SB3's Adam settings, with the fused update: one kernel for all parameters instead of ~10 ops each
            kwargs["optimizer_kwargs"] = {"eps": 1e-5, "fused": True}
        super().__init__(
            observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs
        )

    def _build(self, lr_schedule: Any) -> None:
        # before the optimizer that super()._build creates, so that it trains the head too
        self.reconstruction_head = None
        if self.reconstruction_lags:
            size = len(self.reconstruction_lags) * _observation_dim(self.observation_space)
            self.reconstruction_head = nn.Linear(self.features_dim, size)
        self.image_reconstruction_head = None
        if self.image_reconstruction:
            encoders = self._extractors()["pi"].image_encoders()
            if not encoders:
                raise ValueError(
                    f"image_reconstruction decodes frames from their image encoder's output, but this policy's "
                    f"{type(self._extractors()['pi']).__name__} on {self.observation_space} has no image encoder "
                    "giving a vector per frame: it needs an image observation (or a dict with one) and, for the "
                    "Tensor Memory, image_stem 'nature_cnn' or 'spatial_softmax' (or 'auto' on frames of 36x36 "
                    "pixels or more); or turn image_reconstruction off"
                )
            subspaces = _subspaces(self.observation_space)
            self.image_reconstruction_head = nn.ModuleDict(
                {
                    _head_name(key): nn.Linear(int(encoder.features_dim), int(np.prod(_pooled_shape(subspaces[key]))))
                    for key, encoder in encoders.items()
                }
            )
        self.features_whitening = None
        if self.whiten_features:
            self.features_whitening = nn.ModuleDict(
                {key: RunningWhiten(self.features_dim) for key in self._extractors()}
            )
        super()._build(lr_schedule)
        if self.ortho_init:
            for extractor in self._extractors().values():
                extractor.restore_initialisation()

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {
            **super()._get_constructor_parameters(),
            "reconstruction_lags": self.reconstruction_lags,
            "image_reconstruction": self.image_reconstruction,
            "whiten_features": self.whiten_features,
        }

    def _extractors(self) -> dict[str, RecurrentFeaturesExtractor]:
        if self.share_features_extractor:
            return {"pi": self.features_extractor}
        return {"pi": self.pi_features_extractor, "vf": self.vf_features_extractor}

    def initial_state(self, n_envs: int) -> TensorDict:
        """State at an episode start for ``n_envs`` envs."""
        states = {key: ex.initial_state(n_envs, self.device) for key, ex in self._extractors().items()}
        return TensorDict(states, batch_size=[n_envs], device=self.device)

    def _preprocess(self, obs: Obs, leading: tuple[int, ...]) -> Obs:
        """SB3 preprocessing on ``(*leading, ...)`` observations (flattened for it, then restored)."""
        count = int(np.prod(leading))
        flat = map_obs(lambda x: x.reshape(count, *x.shape[len(leading) :]), obs)
        flat = preprocess_obs(flat, self.observation_space, normalize_images=self.normalize_images)
        return map_obs(lambda x: x.reshape(*leading, *x.shape[1:]), flat)

    def _features(
        self, obs: Obs, state: TensorDict, episode_starts: torch.Tensor, critic_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, TensorDict]:
        """Actor and critic features for one step ``(B, ...)`` or a sequence ``(T, B, ...)``.

        ``critic_only`` skips the actor's own extractor (when it has one): its features and state are omitted.
        """
        sequence = episode_starts.dim() == 2
        obs = self._preprocess(obs, tuple(episode_starts.shape))
        new_state, features = {}, {}
        extractors = self._extractors()
        if critic_only and "vf" in extractors:
            del extractors["pi"]
        for key, extractor in extractors.items():
            run = extractor.sequence if sequence else extractor.step
            features[key], new_state[key] = run(obs, state[key], episode_starts)
            if self.features_whitening is not None:
                features[key] = self.features_whitening[key](features[key])
        new_state = TensorDict(new_state, batch_size=state.batch_size, device=state.device)
        critic = features.get("vf", features.get("pi"))
        return features.get("pi", critic), critic, new_state

    def forward(  # type: ignore[override]
        self, obs: Obs, state: TensorDict, episode_starts: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TensorDict]:
        """One step for ``B`` envs -> (actions, values ``(B,)``, log-probs ``(B,)``, new state)."""
        pi_features, vf_features, state = self._features(obs, state, episode_starts)
        latent_pi, latent_vf = (
            self.mlp_extractor.forward_actor(pi_features),
            self.mlp_extractor.forward_critic(vf_features),
        )
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))
        return actions, self.value_net(latent_vf).flatten(), log_prob, state

    def evaluate_sequences(
        self, obs: Obs, actions: torch.Tensor, state: TensorDict, episode_starts: torch.Tensor
    ) -> SequenceEvaluation:
        """Replay ``T`` steps of ``B`` sequences from ``state`` -> values, log-probs, entropy ``(T, B)``, the
        actor's features ``(T, B, F)`` and, with ``image_reconstruction``, its image encoders' outputs
        ``(T, B, E)``."""
        steps, batch = episode_starts.shape
        outputs: dict[str | None, list[torch.Tensor]] = {}
        hooks = []
        if self.image_reconstruction_head is not None:
            for key, encoder in self._extractors()["pi"].image_encoders().items():
                outputs[key] = []
                hooks.append(encoder.register_forward_hook(lambda _m, _i, out, key=key: outputs[key].append(out)))
        try:
            pi_features, vf_features, _ = self._features(obs, state, episode_starts)
        finally:
            for hook in hooks:
                hook.remove()
        encoded = {key: torch.cat(out).view(steps, batch, -1) for key, out in outputs.items()}
        latent_pi = self.mlp_extractor.forward_actor(pi_features.flatten(0, 1))
        latent_vf = self.mlp_extractor.forward_critic(vf_features.flatten(0, 1))
        distribution = self._get_action_dist_from_latent(latent_pi)
        flat_actions = actions.reshape(steps * batch, *actions.shape[2:])
        if isinstance(self.action_space, spaces.Discrete):
            flat_actions = flat_actions.long().flatten()
        log_prob = distribution.log_prob(flat_actions).view(steps, batch)
        entropy = distribution.entropy()
        entropy = None if entropy is None else entropy.view(steps, batch)
        return SequenceEvaluation(self.value_net(latent_vf).view(steps, batch), log_prob, entropy, pi_features, encoded)

    def reconstruction_loss(
        self,
        obs: Obs,
        features: torch.Tensor,
        episode_starts: torch.Tensor,
        mask: torch.Tensor,
        standardize: bool = False,
    ) -> torch.Tensor:
        """Mean squared error of the observations ``reconstruction_lags`` steps back, decoded from ``features``.

        ``obs`` ``(T, B, ...)`` as stored, ``features`` ``(T, B, F)``, ``episode_starts`` and ``mask`` ``(T, B)``.
        Step ``t`` is scored for lag ``l`` only where ``t - l`` lies in the same sequence and episode and both
        steps are valid; each lag's error is averaged over its scored steps, and the lags that score any step
        are averaged (0 when none does). With ``standardize`` each dimension of the target is standardized by
        its mean and standard deviation over the valid steps and clipped to ``[-10, 10]``, as VecNormalize
        treats observations, so that every dimension counts alike whatever its scale (a joint velocity, a
        pooled pixel that a small object changes).
        """
        if self.reconstruction_head is None:
            raise RuntimeError("this policy was built without reconstruction_lags: it has no reconstruction head")
        steps, batch = episode_starts.shape
        flat = map_obs(lambda x: x.flatten(0, 1), self._preprocess(obs, (steps, batch)))
        target = reconstruction_target(self.observation_space, flat).view(steps, batch, -1)
        if standardize:
            target = _standardized(target, mask)
        decoded = self.reconstruction_head(features).view(steps, batch, len(self.reconstruction_lags), -1)
        episode = episode_starts.cumsum(0)
        sums, counts = [], []
        for k, lag in enumerate(self.reconstruction_lags):
            valid = (episode[lag:] == episode[:-lag]) & (mask[lag:] > 0) & (mask[:-lag] > 0)
            error = (decoded[lag:, :, k] - target[:-lag]).pow(2).mean(-1)
            sums.append(torch.where(valid, error, 0.0).sum())
            counts.append(valid.sum())
        counts = torch.stack(counts)
        scored = counts > 0
        per_lag = torch.stack(sums) / counts.clamp_min(1)
        return torch.where(scored, per_lag, 0.0).sum() / scored.sum().clamp_min(1)

    def image_reconstruction_loss(
        self,
        obs: Obs,
        encoded_images: dict[str | None, torch.Tensor],
        mask: torch.Tensor,
        standardize: bool = False,
    ) -> torch.Tensor:
        """Mean squared error of each frame, average-pooled, decoded from its image encoder's output.

        ``obs`` ``(T, B, ...)`` as stored, ``encoded_images`` the encoders' outputs ``(T, B, E)`` by observation key
        (:attr:`SequenceEvaluation.encoded_images`), ``mask`` ``(T, B)``. Each image's error is averaged over the
        valid steps, then over the images; ``standardize`` as in :meth:`reconstruction_loss`.
        """
        if self.image_reconstruction_head is None:
            raise RuntimeError(
                "this policy was built without image_reconstruction: it has no image reconstruction head"
            )
        steps, batch = mask.shape
        flat = map_obs(lambda x: x.flatten(0, 1), self._preprocess(obs, (steps, batch)))
        subspaces = _subspaces(self.observation_space)
        losses = []
        for key, encoded in encoded_images.items():
            target = _pooled_image(flat if key is None else flat[key], subspaces[key]).view(steps, batch, -1)
            if standardize:
                target = _standardized(target, mask)
            error = (self.image_reconstruction_head[_head_name(key)](encoded) - target).pow(2).mean(-1)
            losses.append(torch.where(mask > 0, error, 0.0).sum() / mask.sum().clamp_min(1))
        return torch.stack(losses).mean()

    def predict_values(  # type: ignore[override]
        self, obs: Obs, state: TensorDict, episode_starts: torch.Tensor
    ) -> torch.Tensor:
        """Critic values ``(B,)`` of one step from ``state``."""
        _, vf_features, _ = self._features(obs, state, episode_starts, critic_only=True)
        return self.value_net(self.mlp_extractor.forward_critic(vf_features)).flatten()

    def _stateless(self, name: str) -> NoReturn:
        raise NotImplementedError(
            f"{type(self).__name__}.{name} would act from the initial state, without what the memory holds: "
            "use predict(observation, state, episode_start) to act, evaluate_sequences to score stored "
            "sequences, or forward(obs, state, episode_starts)"
        )

    def evaluate_actions(self, obs: Obs, actions: torch.Tensor) -> NoReturn:  # type: ignore[override]
        """SB3's stateless scoring of actions: refused (:meth:`evaluate_sequences` carries the state)."""
        self._stateless("evaluate_actions")

    def get_distribution(self, obs: Obs) -> NoReturn:  # type: ignore[override]
        """SB3's stateless action distribution: refused (:meth:`forward` carries the state)."""
        self._stateless("get_distribution")

    def _predict(self, observation: Obs, deterministic: bool = False) -> NoReturn:  # type: ignore[override]
        """SB3's stateless action: refused (:meth:`predict` carries the state)."""
        self._stateless("_predict")

    def _check_state(self, state: object, n_envs: int) -> None:
        keys = set(self._extractors())
        if not isinstance(state, TensorDict):
            raise TypeError(
                f"state must be the TensorDict returned by the previous predict() (or None to start), got "
                f"{type(state).__name__}"
            )
        if tuple(state.batch_size) != (n_envs,) or set(state.keys()) != keys:
            raise ValueError(
                f"state is for {tuple(state.batch_size)} envs with keys {sorted(state.keys())}, but the observation "
                f"holds {n_envs} env(s) and this policy's state has keys {sorted(keys)}; pass state=None "
                "to start new episodes"
            )

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: TensorDict | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, TensorDict]:
        """Actions for numpy observations, carrying ``state`` (``None`` = start of episodes), as sb3-contrib.

        Returns ``(actions, state)``; pass both back in on the next call with ``episode_start`` set to the
        previous step's ``done`` flags, as SB3's ``evaluate_policy`` does.
        """
        if self.training:
            self.set_training_mode(False)
        obs, vectorized = self.obs_to_tensor(observation)
        n_envs = obs_batch_size(obs)
        if state is None:
            state = self.initial_state(n_envs)
        self._check_state(state, n_envs)
        if episode_start is None:
            episode_start = np.zeros(n_envs, dtype=bool)
        if np.size(episode_start) != n_envs:
            raise ValueError(
                f"episode_start must hold one flag per env ({n_envs}), got shape {np.shape(episode_start)}"
            )
        starts = torch.as_tensor(np.asarray(episode_start).reshape(n_envs), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            actions, _, _, state = self.forward(obs, state, starts, deterministic=deterministic)
        actions = actions.cpu().numpy().reshape((-1, *self.action_space.shape))
        if isinstance(self.action_space, spaces.Box):
            if self.squash_output:
                actions = self.unscale_action(actions)
            else:
                actions = np.clip(actions, self.action_space.low, self.action_space.high)
        if not vectorized:
            actions = actions.squeeze(axis=0)
        return actions, state
