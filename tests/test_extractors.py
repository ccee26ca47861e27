"""Recurrent extractors: sequence form equals stepping, state sizes, observation spaces, errors."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import preprocess_obs
from torch import nn

from tmem_agents.gate_init import chrono_biases
from tmem_agents.ops import write_mass
from tmem_agents.policies import EXTRACTORS, TensorMemoryExtractor
from tmem_agents.policies.base import map_obs
from tmem_agents.policies.encoders import SpatialSoftmaxCNN
from tmem_agents.policies.tokenizers import ImageTokenizer

VECTOR = spaces.Box(-1, 1, (6,), np.float32)
IMAGE = spaces.Box(0, 255, (3, 40, 44), np.uint8)
DICT = spaces.Dict(
    {
        "pos": spaces.Box(-1, 1, (3,), np.float32),
        "cue": spaces.Discrete(4),
        "bits": spaces.MultiDiscrete([2, 3]),
        "img": IMAGE,
    }
)
KWARGS = {"tensor_memory": {"features_dim": 12, "token_dim": 8, "memory": {"grid": (3, 3, 3), "channels": 2}}}


def _obs(space, steps, batch, seed=0):
    space.seed(seed)
    sample = [[space.sample() for _ in range(batch)] for _ in range(steps)]
    if isinstance(space, spaces.Dict):
        raw = {k: torch.as_tensor(np.array([[s[k] for s in row] for row in sample])) for k in space.spaces}
    else:
        raw = torch.as_tensor(np.array(sample))
    flat = map_obs(lambda x: x.reshape(steps * batch, *x.shape[2:]), raw)
    return map_obs(lambda x: x.reshape(steps, batch, *x.shape[1:]), preprocess_obs(flat, space))


@pytest.mark.parametrize(("size", "cells"), [(9, 4), (16, 8), (17, 8), (33, 8), (35, 8), (64, 8), (65, 8)])
def test_the_patch_stem_halves_down_to_at_most_8x8_cells(size, cells):
    tokenizer = ImageTokenizer(spaces.Box(0, 255, (3, size, size), np.uint8), token_dim=8)
    assert tokenizer.map_size == (cells, cells)


@pytest.mark.parametrize("name", list(EXTRACTORS))
@pytest.mark.parametrize("space", [VECTOR, DICT], ids=["vector", "dict"])
def test_sequence_equals_step_by_step_with_resets(name, space):
    torch.manual_seed(0)
    extractor = EXTRACTORS[name](space, **KWARGS.get(name, {"features_dim": 12}))
    steps, batch = 5, 3
    obs = _obs(space, steps, batch)
    starts = torch.zeros(steps, batch)
    starts[2, 0] = starts[3, 2] = 1
    state = extractor.initial_state(batch)
    state = state.apply(lambda t: torch.randn_like(t))
    features, final = extractor.sequence(obs, state, starts)
    assert features.shape == (steps, batch, 12)
    for t in range(steps):
        out, state = extractor.step(map_obs(lambda x, t=t: x[t], obs), state, starts[t])
        assert torch.allclose(out, features[t], atol=1e-5), f"step {t}"
    for key in final.keys(include_nested=True, leaves_only=True):
        assert torch.allclose(final[key], state[key], atol=1e-5)


@pytest.mark.parametrize("image_stem", ["patches", "nature_cnn", "spatial_softmax"])
def test_tensor_memory_tokenizes_images_and_dicts_and_uses_its_memory(image_stem):
    torch.manual_seed(0)
    for space in (IMAGE, spaces.Box(0, 255, (40, 44, 3), np.uint8), DICT):
        extractor = TensorMemoryExtractor(space, image_stem=image_stem, **KWARGS["tensor_memory"])
        obs = map_obs(lambda x: x[0], _obs(space, 1, 2))
        fresh, state = extractor.step(obs, extractor.initial_state(2), torch.zeros(2))
        for _ in range(3):
            _, state = extractor.step(obs, state, torch.zeros(2))
        carried, _ = extractor.step(obs, state, torch.zeros(2))
        assert not torch.allclose(fresh, carried), "features must depend on what the memory holds"
        reset, _ = extractor.step(obs, state, torch.ones(2))
        assert torch.allclose(reset, fresh, atol=1e-6)
    # tokens of group_size (4) dims: bits (one-hot 2 + 3) 2, cue 1, pos 1; 8 (the CNNs) or 5 x 5 cells (patches)
    assert extractor.tokenizer.num_tokens == 2 + 1 + 1 + (5 * 5 if image_stem == "patches" else 8)


def test_the_cells_stem_gives_a_token_per_cell_written_at_its_place():
    torch.manual_seed(0)
    space = spaces.Dict({"img": spaces.Box(0, 255, (64, 64, 3), np.uint8), "pos": spaces.Box(-1, 1, (3,), np.float32)})
    extractor = TensorMemoryExtractor(space, image_stem="cells", memory={"per_token": True, "read_grid": True})
    extractor.restore_initialisation()
    assert extractor.tokenizer.num_tokens == 4 * 4 + 1  # the Nature CNN's 4x4 map of a 64x64 frame, one vector token
    centres = torch.tensor([-0.75, -0.25, 0.25, 0.75])
    obs = map_obs(lambda x: x[0], _obs(space, 1, 2))
    tokens = extractor.tokenizer(obs)
    _, write_at, _, _ = extractor.memory.write_terms(extractor.memory.write_proj(tokens))
    assert torch.allclose(write_at[0, :16, 0], centres.repeat(4))  # x runs along the image's width
    assert torch.allclose(write_at[0, :16, 1], centres.repeat_interleave(4))
    assert torch.allclose(write_at[:, 16], torch.zeros(2, 3))  # the vector token has no place: the centre
    steps, batch = 4, 2
    obs = _obs(space, steps, batch)
    starts = torch.zeros(steps, batch)
    starts[2, 1] = 1
    features, _ = extractor.sequence(obs, extractor.initial_state(batch), starts)
    state = extractor.initial_state(batch)
    for t in range(steps):
        out, state = extractor.step(map_obs(lambda x, t=t: x[t], obs), state, starts[t])
        assert torch.allclose(out, features[t], atol=1e-5)
    without = TensorMemoryExtractor(space, image_stem="cells")
    assert without.memory.place_logits is None, "a chunk's single write has no one place"
    with pytest.raises(ValueError, match="leave memory.chunk_size unset"):
        TensorMemoryExtractor(space, image_stem="cells", memory={"per_token": True, "chunk_size": 1})
    with pytest.raises(ValueError, match="image_stem='cells' needs images of at least 36x36"):
        TensorMemoryExtractor(spaces.Box(0, 255, (3, 24, 24), np.uint8), image_stem="cells")


def test_inner_places_put_each_cell_of_the_frame_on_a_cell_of_the_grid():
    torch.manual_seed(0)
    space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
    memory = {"per_token": True, "read_grid": True, "inner_places": True, "grid": (3, 6, 6), "sigma_scale": 0.1}
    extractor = TensorMemoryExtractor(space, image_stem="cells", memory=memory)
    extractor.restore_initialisation()
    inner = torch.tensor([-0.6, -0.2, 0.2, 0.6])  # cells 1-4 of 6 at -1 + 2k/5; the 4x4 map's centres at +-0.25, +-0.75
    tokens = extractor.tokenizer(map_obs(lambda x: x[0], _obs(space, 1, 2)))
    _, write_at, sigma, strength = extractor.memory.write_terms(extractor.memory.write_proj(tokens))
    assert torch.allclose(write_at[0, :, 0], inner.repeat(4), atol=1e-6)
    assert torch.allclose(write_at[0, :, 1], inner.repeat_interleave(4), atol=1e-6)
    assert torch.allclose(write_at[..., 2], torch.zeros(2, 16))  # the middle of 3 layers
    mass = write_mass(strength[:1, :1], write_at[:1, :1], sigma[:1, :1], grid=(3, 6, 6))[0, 0].detach()
    assert torch.isclose(mass[1, 1, 1], strength[0, 0], rtol=1e-4), "a narrow write fills its own cell"
    mass[1, 1, 1] = 0
    assert mass.max() < 0.01 * strength[0, 0], "and reaches each neighbour (0.4 away, sigma 0.13) at under 1%"
    with pytest.raises(ValueError, match=r"needs >= 3 cells on every axis on which a place is not 0.*\['x'\]"):
        TensorMemoryExtractor(space, image_stem="cells", memory={**memory, "grid": (3, 6, 2)})
    with pytest.raises(ValueError, match="the tokens have no places"):
        TensorMemoryExtractor(space, image_stem="nature_cnn", memory={**memory, "per_token": False})


def test_auto_image_stem_takes_the_nature_cnn_from_36_pixels():
    for shape, stem in (((3, 40, 44), "nature_cnn"), ((36, 36, 3), "nature_cnn"), ((3, 35, 64), "patches")):
        extractor = TensorMemoryExtractor(spaces.Box(0, 255, shape, np.uint8), **KWARGS["tensor_memory"])
        assert extractor.tokenizer.num_tokens == (8 if stem == "nature_cnn" else 4 * 8), shape


@pytest.mark.parametrize("name", list(EXTRACTORS))
def test_episodes_run_whole_episodes_from_the_initial_state(name):
    torch.manual_seed(0)
    extractor = EXTRACTORS[name](DICT, **KWARGS.get(name, {}))
    obs = _obs(DICT, 4, 3)
    state = extractor.initial_state(3)
    stepped = []
    for t in range(4):
        features, state = extractor.forward_step({k: v[t] for k, v in obs.items()}, state)
        stepped.append(features)
    assert torch.allclose(extractor.episodes(obs), torch.stack(stepped), atol=1e-5)


def test_blank_observations_write_nothing_from_the_tokenizer():
    blank = torch.zeros(8, 2, 6)
    starts = torch.zeros(8, 2)
    written = {}
    for source in ("block_input", "memory_input"):
        torch.manual_seed(0)
        extractor = TensorMemoryExtractor(VECTOR, memory={"write_from": source})
        _, state = extractor.sequence(blank, extractor.initial_state(2), starts)
        assert state["h"].abs().max() == 0  # zero observations make zero tokens, which write zero contents
        with torch.no_grad():
            extractor.tokenizer.bias.normal_(0.0, 1e-3)  # as training leaves them: small, not zero
            _, state = extractor.sequence(blank, extractor.initial_state(2), starts)
        written[source] = state["h"].abs().max()
    # the normed tokens make every small blank token a full-size write; the tokenizer's stay small
    assert written["block_input"] < 1e-2 * written["memory_input"]


def test_state_size_is_constant_and_reported():
    extractor = TensorMemoryExtractor(VECTOR, **KWARGS["tensor_memory"])
    state = extractor.initial_state(4)
    assert state["h"].shape == (4, 2, 3, 3, 3)
    obs = torch.zeros(4, 6)
    for _ in range(50):
        _, state = extractor.step(obs, state, torch.zeros(4))
    assert state["h"].shape == (4, 2, 3, 3, 3) and state.bytes() == 2 * 4 * 2 * 27 * 4


def test_unsupported_spaces_and_options_raise_clear_errors():
    with pytest.raises(TypeError, match="unsupported observation space"):
        TensorMemoryExtractor(spaces.Tuple([VECTOR, VECTOR]))
    with pytest.warns(UserWarning, match=r"encoded as a flat vector of 12 values, not as an image.*uint8"):
        TensorMemoryExtractor(spaces.Box(0, 1, (3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"image space of shape \(40, 40, 3\) is channels-last"):
        EXTRACTORS["lstm"](spaces.Box(0, 255, (40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown memory option"):
        TensorMemoryExtractor(VECTOR, memory={"grids": (4, 4, 4)})
    with pytest.raises(ValueError, match="chunk_size"):
        TensorMemoryExtractor(VECTOR, memory={"chunk_size": 4})
    with pytest.raises(ValueError, match="channels"):
        TensorMemoryExtractor(VECTOR, memory={"channels": 0})
    with pytest.raises(ValueError, match="pool"):
        TensorMemoryExtractor(VECTOR, pool="max")


def _assert_steps_match_the_sequence(extractor, obs) -> torch.Tensor:
    """Step ``obs`` ``(4, 2, ...)`` one step at a time (an episode starts at step 2 of env 1) and compare with
    :meth:`sequence`; return its features."""
    starts = torch.zeros(4, 2)
    starts[2, 1] = 1
    features, _ = extractor.sequence(obs, extractor.initial_state(2), starts)
    state = extractor.initial_state(2)
    for t in range(4):
        out, state = extractor.step(map_obs(lambda x, t=t: x[t], obs), state, starts[t])
        assert torch.allclose(out, features[t], atol=1e-5), f"step {t}"
    return features


@pytest.mark.parametrize("image_stem", ["nature_cnn", "spatial_softmax"])
def test_cnn_stems_cut_an_image_encoder_into_tokens(image_stem):
    torch.manual_seed(0)
    kwargs = {**KWARGS["tensor_memory"], "image_stem": image_stem, "image_tokens": 3}
    extractor = TensorMemoryExtractor(DICT, **kwargs)
    image = extractor.tokenizer.parts["img"]
    assert image.num_tokens == 3 and extractor.tokenizer.num_tokens == 2 + 1 + 1 + 3
    obs = _obs(DICT, 4, 2)
    _assert_steps_match_the_sequence(extractor, obs)
    tokens = image(obs["img"][0])
    assert tokens.shape == (2, 3, 8)
    assert torch.allclose(tokens.flatten(1), image.cnn(obs["img"][0]))
    hwc = TensorMemoryExtractor(spaces.Box(0, 255, (40, 44, 3), np.uint8), **kwargs).tokenizer
    hwc.load_state_dict(image.state_dict())
    assert torch.allclose(hwc(obs["img"][0].permute(0, 2, 3, 1)), tokens)


def test_spatial_softmax_finds_each_maps_peak_as_x_then_y():
    encoder = SpatialSoftmaxCNN(IMAGE, features_dim=5, keypoints=2)
    encoder.cnn = nn.Identity()  # the "images" below are the maps themselves
    with torch.no_grad():
        encoder.log_temperature.fill_(-5.0)
    maps = torch.zeros(1, 2, 5, 9)
    maps[0, 0, 1, 6] = 1.0  # row 1 of 5, column 6 of 9
    points = encoder.keypoints(maps)
    assert torch.allclose(points[0, 0], torch.tensor([-1 + 6 * 2 / 8, -1 + 1 * 2 / 4]), atol=1e-3)
    assert torch.allclose(points[0, 1], torch.zeros(2), atol=1e-6), "a flat map's keypoint is the centre"
    assert encoder(maps).shape == (1, 5)


def test_baselines_take_the_spatial_softmax_encoder():
    for space in (IMAGE, DICT):
        for name in ("lstm", "mlp"):
            extractor = EXTRACTORS[name](space, features_dim=12, image_encoder="spatial_softmax")
            image = extractor.encoder if space is IMAGE else extractor.encoder.extractors["img"]
            assert isinstance(image, SpatialSoftmaxCNN)
            features, _ = extractor.step(
                map_obs(lambda x: x[0], _obs(space, 1, 2)), extractor.initial_state(2), torch.zeros(2)
            )
            assert features.shape == (2, 12)
    with pytest.raises(ValueError, match="image_encoder must be one of"):
        EXTRACTORS["gru"](IMAGE, image_encoder="vit")


def test_bad_image_stems_raise_clear_errors():
    with pytest.raises(ValueError, match="image_stem must be one of"):
        TensorMemoryExtractor(IMAGE, image_stem="vit")
    with pytest.raises(ValueError, match="image_tokens must be >= 1"):
        TensorMemoryExtractor(IMAGE, image_stem="nature_cnn", image_tokens=0)
    with pytest.raises(ValueError, match="at least 36x36 pixels, got 32x32; use image_stem='patches'"):
        TensorMemoryExtractor(spaces.Box(0, 255, (3, 32, 32), np.uint8), image_stem="nature_cnn")


def test_flatten_pool_concatenates_the_tokens():
    torch.manual_seed(0)
    flat = TensorMemoryExtractor(DICT, pool="flatten", **KWARGS["tensor_memory"])
    assert flat.head[0].in_features == flat.tokenizer.num_tokens * 8
    assert TensorMemoryExtractor(DICT, pool="mean", **KWARGS["tensor_memory"]).head[0].in_features == 8
    assert _assert_steps_match_the_sequence(flat, _obs(DICT, 4, 2)).shape == (4, 2, 12)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_read_to_head_widens_the_head_and_steps_match_the_sequence(n_layers):
    torch.manual_seed(0)
    extractor = TensorMemoryExtractor(DICT, read_to_head=True, n_layers=n_layers, **KWARGS["tensor_memory"])
    pooled = 8 * extractor.tokenizer.num_tokens
    assert extractor.head[0].in_features == pooled + 8
    assert _assert_steps_match_the_sequence(extractor, _obs(DICT, 4, 2)).shape == (4, 2, 12)


def test_read_to_head_features_are_the_head_of_the_pooled_tokens_and_the_read():
    torch.manual_seed(0)
    extractor = TensorMemoryExtractor(DICT, read_to_head=True, **KWARGS["tensor_memory"])
    pooled = 8 * extractor.tokenizer.num_tokens
    obs = map_obs(lambda x: x[0], _obs(DICT, 1, 2))
    state = extractor.initial_state(2).apply(torch.randn_like)
    with torch.no_grad():
        extractor.head[0].weight[:, :pooled] = 0  # the head now sees the read only
        features, _ = extractor.forward_step(obs, state)
        tokens = extractor.tokenizer(obs)
        layer = extractor.layers[0]
        read, _ = extractor.memory(layer.norm(layer.pre(tokens)), state, None, tokens)
        expected = extractor.head(torch.cat([torch.zeros(2, pooled), read.mean(dim=1)], dim=-1))
    assert torch.allclose(features, expected, atol=1e-5)
    assert not torch.allclose(features, extractor.head(torch.zeros(2, pooled + 8)), atol=1e-3)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_memory_features_come_from_the_read_alone_and_steps_match_the_sequence(n_layers):
    """The last ``memory_features`` features are the memory head of the read: with the whole grid read and one
    layer, the first step of an episode reads an empty memory, so they are the same whatever the step shows
    (with two, the second layer reads what the first wrote)."""
    torch.manual_seed(0)
    memory = {**KWARGS["tensor_memory"]["memory"], "read_grid": True}
    kwargs = {**KWARGS["tensor_memory"], "memory": memory}
    extractor = TensorMemoryExtractor(DICT, memory_features=5, head_norm=True, n_layers=n_layers, **kwargs)
    assert extractor.head[0].out_features == 7 and extractor.memory_head[0].in_features == 8
    assert isinstance(extractor.memory_head[1], nn.LayerNorm)
    features = _assert_steps_match_the_sequence(extractor, _obs(DICT, 4, 2))
    assert features.shape == (4, 2, 12)
    obs = map_obs(lambda x: x[0], _obs(DICT, 1, 2, seed=1))
    with torch.no_grad():
        first, _ = extractor.forward_step(obs, extractor.initial_state(2))
        later, _ = extractor.forward_step(obs, extractor.initial_state(2).apply(torch.randn_like))
    assert torch.allclose(first[0, 7:], first[1, 7:]) == (n_layers == 1)
    assert not torch.allclose(first[0, :7], first[1, :7])
    assert not torch.allclose(later[0, 7:], later[1, 7:])


def test_memory_features_are_refused_out_of_range_or_all_without_a_read_after_the_write():
    for bad in (-1, 13, 2.0, True):
        with pytest.raises(ValueError, match="memory_features must be"):
            TensorMemoryExtractor(DICT, memory_features=bad, **KWARGS["tensor_memory"])
    with pytest.raises(ValueError, match="read_after_write"):
        TensorMemoryExtractor(DICT, memory_features=12, **KWARGS["tensor_memory"])


@pytest.mark.parametrize("n_layers", [1, 2])
def test_features_from_the_memory_alone_read_the_state_after_the_steps_write(n_layers):
    """With every feature from the read after the step's write, the first step of an episode already sees
    its observation, and steps match the sequence."""
    torch.manual_seed(0)
    memory = {**KWARGS["tensor_memory"]["memory"], "read_grid": True, "read_after_write": True}
    kwargs = {**KWARGS["tensor_memory"], "memory": memory}
    extractor = TensorMemoryExtractor(DICT, memory_features=12, n_layers=n_layers, **kwargs)
    assert extractor.head is None and extractor.memory_head[0].out_features == 12
    features = _assert_steps_match_the_sequence(extractor, _obs(DICT, 4, 2))
    assert features.shape == (4, 2, 12)
    obs = map_obs(lambda x: x[0], _obs(DICT, 1, 2, seed=1))
    with torch.no_grad():
        first, _ = extractor.forward_step(obs, extractor.initial_state(2))
    assert not torch.allclose(first[0], first[1])


def test_a_block_whose_output_reaches_no_feature_is_skipped_and_the_features_are_unchanged():
    """One layer, every feature from a read of the whole grid, writes from the tokenizer's tokens: the block's
    attention is not run, and running it would give the same features and gradients."""
    torch.manual_seed(0)
    memory = {**KWARGS["tensor_memory"]["memory"], "read_grid": True, "read_after_write": True}
    extractor = TensorMemoryExtractor(DICT, memory_features=12, **{**KWARGS["tensor_memory"], "memory": memory})
    assert extractor.block_unused
    calls = []
    extractor.layers[0].block.norm1.register_forward_hook(lambda *_: calls.append(1))
    obs, starts = _obs(DICT, 4, 2), torch.zeros(4, 2)
    state = extractor.initial_state(2).apply(torch.randn_like)
    results = []
    for unused in (True, False):
        extractor.block_unused = unused
        extractor.zero_grad()
        features, _ = extractor.sequence(obs, state, starts)
        features.square().sum().backward()
        results.append((features.detach(), extractor.memory.content.weight.grad.clone()))
        assert len(calls) == (0 if unused else 1)
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
    assert all(p.grad is None for p in extractor.layers[0].block.parameters())
    for kwargs in ({"memory_features": 12, "n_layers": 2}, {"memory_features": 5}):
        assert not TensorMemoryExtractor(DICT, **{**KWARGS["tensor_memory"], "memory": memory, **kwargs}).block_unused


@pytest.mark.parametrize("n_layers", [1, 2])
def test_tokens_to_head_feeds_the_head_the_tokenizer_output_and_steps_match_the_sequence(n_layers):
    torch.manual_seed(0)
    extractor = TensorMemoryExtractor(DICT, tokens_to_head=True, n_layers=n_layers, **KWARGS["tensor_memory"])
    tokens_dim = 8 * extractor.tokenizer.num_tokens
    assert extractor.head[0].in_features == 2 * tokens_dim
    assert _assert_steps_match_the_sequence(extractor, _obs(DICT, 4, 2)).shape == (4, 2, 12)
    obs = map_obs(lambda x: x[0], _obs(DICT, 1, 2))
    state = extractor.initial_state(2).apply(torch.randn_like)
    with torch.no_grad():
        extractor.head[0].weight[:, :tokens_dim] = 0  # the head now sees the tokenizer's tokens only
        features, _ = extractor.forward_step(obs, state)
        expected = extractor.head(torch.cat([torch.zeros(2, tokens_dim), extractor.tokenizer(obs).flatten(1)], -1))
    assert torch.allclose(features, expected, atol=1e-5)
    assert not torch.allclose(features, extractor.head(torch.zeros(2, 2 * tokens_dim)), atol=1e-3)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_without_block_grad_the_tokenizer_learns_only_through_the_memory_write(n_layers):
    """The features are the same; the tokenizer's gradient comes only through what the memory stores. With one
    layer a step reads before it writes, so the first step of an episode passes the tokenizer no gradient; with
    two, the second layer reads what the first wrote in the same step."""
    obs = _obs(DICT, 2, 2)
    starts = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    grads, features = {}, {}
    for block_grad in (True, False):
        torch.manual_seed(0)
        extractor = TensorMemoryExtractor(
            DICT, tokens_to_head=True, block_grad=block_grad, n_layers=n_layers, **KWARGS["tensor_memory"]
        )
        out, _ = extractor.sequence(obs, extractor.initial_state(2), starts)
        features[block_grad] = out.detach()
        tokenizer = list(extractor.tokenizer.parameters())
        grads[block_grad] = [
            torch.cat([g.flatten() for g in torch.autograd.grad(out[t].sum(), tokenizer, retain_graph=True)])
            for t in range(2)
        ]
    assert torch.equal(features[True], features[False])
    assert grads[True][0].abs().sum() > 0
    assert (grads[False][0].abs().sum() == 0) == (n_layers == 1)
    assert grads[False][1].abs().sum() > 0 and not torch.allclose(grads[False][1], grads[True][1])


def test_block_grad_off_needs_a_write_that_passes_the_gradient():
    for memory in ({"write_grad": False}, {"write_from": "memory_input"}):
        with pytest.raises(ValueError, match="block_grad=false trains the tokenizer only through"):
            TensorMemoryExtractor(DICT, block_grad=False, memory={**KWARGS["tensor_memory"]["memory"], **memory})


def test_auto_pool_flattens_observations_with_an_image_and_averages_vectors():
    for space, pool in ((DICT, "flatten"), (IMAGE, "flatten"), (VECTOR, "mean")):
        extractor = TensorMemoryExtractor(space, **KWARGS["tensor_memory"])
        assert extractor.pool == pool
        assert extractor.head[0].in_features == 8 * (extractor.tokenizer.num_tokens if pool == "flatten" else 1)


def test_tanh_head_bounds_the_features_and_a_bad_activation_is_refused():
    torch.manual_seed(0)
    extractor = TensorMemoryExtractor(VECTOR, head_activation="tanh", **KWARGS["tensor_memory"])
    assert isinstance(extractor.head[1], nn.Tanh)
    with torch.no_grad():
        extractor.head[0].bias.fill_(-5.0)  # every ReLU unit would be dead here
    features = _assert_steps_match_the_sequence(extractor, _obs(VECTOR, 4, 2))
    assert features.abs().max() < 1 and (features != 0).all()
    with pytest.raises(ValueError, match="head_activation must be one of"):
        TensorMemoryExtractor(VECTOR, head_activation="gelu")


def test_head_norm_keeps_a_shared_offset_from_saturating_the_tanh_head():
    torch.manual_seed(0)
    extractor = TensorMemoryExtractor(VECTOR, head_activation="tanh", head_norm=True, **KWARGS["tensor_memory"])
    assert [type(m) for m in extractor.head] == [nn.Linear, nn.LayerNorm, nn.Tanh]
    with torch.no_grad():
        extractor.head[0].bias.copy_(torch.linspace(-50.0, 50.0, 12))  # a plain tanh head is saturated here
    linear_out = []
    extractor.head[0].register_forward_hook(lambda module, inputs, output: linear_out.append(output))
    obs = map_obs(lambda x: x[0], _obs(VECTOR, 1, 64))
    with torch.no_grad():
        features, _ = extractor.forward_step(obs, extractor.initial_state(64))
    pre = linear_out[-1]
    assert (torch.tanh(pre).abs() > 0.999).float().mean() > 0.7, "without the norm most features would saturate"
    normed = (pre - pre.mean(-1, keepdim=True)) / torch.sqrt(pre.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(features, torch.tanh(normed), atol=1e-5)
    assert (features.std(dim=0) > 1e-3).all(), "every feature still varies with the observations"
    _assert_steps_match_the_sequence(extractor, _obs(VECTOR, 4, 2))


def _lstm_with_start(**start: float) -> tuple[nn.Module, nn.Module]:
    """An LSTM extractor of 8 units with PyTorch's start and the same draw with the gate ``start`` options."""
    space = spaces.Box(-1, 1, (3,), np.float32)
    torch.manual_seed(0)
    default = EXTRACTORS["lstm"](space, features_dim=8)
    torch.manual_seed(0)
    return default, EXTRACTORS["lstm"](space, features_dim=8, **start)


def test_lstm_forget_timescale_max_spreads_the_input_and_forget_gates_and_refuses_forget_bias_beside_it():
    default, spread = _lstm_with_start(forget_timescale_max=40.0)
    spread.apply_sb3_initialisation()  # the start a policy gives it keeps the spread
    input_bias, forget = chrono_biases(8, 40.0)
    total = spread.rnn.bias_ih_l0 + spread.rnn.bias_hh_l0
    assert torch.allclose(total[:8], input_bias) and torch.allclose(total[8:16], forget)
    for name in ("bias_ih_l0", "bias_hh_l0"):  # the cell and output gates keep PyTorch's start
        assert torch.equal(getattr(spread.rnn, name)[16:], getattr(default.rnn, name)[16:])
    with pytest.raises(ValueError, match="forget_bias .* or forget_timescale_max .*, not both"):
        _lstm_with_start(forget_bias=3.0, forget_timescale_max=40.0)


def test_the_memory_extractor_keeps_its_spread_gate_starts_under_the_policys_initialisation():
    memory = {**KWARGS["tensor_memory"]["memory"], "forget_timescale_max": 40.0}
    extractor = TensorMemoryExtractor(VECTOR, **{**KWARGS["tensor_memory"], "memory": memory})
    extractor.apply_sb3_initialisation()
    input_bias, forget = chrono_biases(2, 40.0)
    assert torch.equal(extractor.memory.update.pointwise_bias.detach()[:4], torch.cat([input_bias, forget]))


def test_lstm_forget_bias_sets_the_forget_gate_and_none_keeps_torch_init():
    default, biased = _lstm_with_start(forget_bias=2.0)
    total = biased.rnn.bias_ih_l0 + biased.rnn.bias_hh_l0
    assert torch.allclose(total[8:16], torch.full((8,), 2.0))
    for name in ("bias_ih_l0", "bias_hh_l0"):
        mask = torch.ones(32, dtype=torch.bool)
        mask[8:16] = False
        assert torch.equal(getattr(biased.rnn, name)[mask], getattr(default.rnn, name)[mask])
