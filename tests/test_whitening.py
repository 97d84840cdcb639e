"""Statistical and geometric properties of the whitening operator (paper Sec. 4, App. B)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from ntrk_bench import diagnostics as D
from ntrk_bench.config import load_group
from ntrk_bench.whitening import Whitening, make_domain, project_2os, project_block_norms, project_norm, project_tile_stats, two_level_bounds
from ntrk_bench.whitening.census import OpCensus
from ntrk_bench.whitening.domains import butterfly, hadamard_along, hadamard_factors
from ntrk_bench.whitening.project import (PACKED_SORT_MIN, ROW_SORT_MIN_CHUNK, groups, nested_runs, patch_rows,
                                         patch_rows_inverse, project_tile_stats_nested, sort_clip_unsort, tiles,
                                         ungroup)

FLUX = (16, 64, 64)
LEVEL = 0.999


def cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.fixture(scope="module")
def W():
    return Whitening(load_group("whitening", "full"), FLUX)


@pytest.fixture(scope="module")
def noise_ref():
    """The range of every typicality statistic over 64 fresh N(0, I) latents."""
    return D.noise_reference(FLUX, n=64, seed=11)


# ----------------------------------------------------------------------------- bounds
def test_bounds_reduce_to_global_and_one_level_intervals():
    # m = c = 1: the global interval of Prop. B.1
    lo, hi = two_level_bounds(1, 1, 0.95)
    assert lo[0, 0] == pytest.approx(stats.norm.ppf(0.025)) and hi[0, 0] == pytest.approx(stats.norm.ppf(0.975))
    # m = 1: the one-level order-statistic interval of eqs. 75-76, Beta(j, c - j + 1) quantiles
    lo, hi = two_level_bounds(1, 10, 0.9)
    j = np.arange(1, 11)
    np.testing.assert_allclose(lo[0], stats.norm.ppf(stats.beta.ppf(0.05, j, 11 - j)), rtol=1e-10)
    np.testing.assert_allclose(hi[0], stats.norm.ppf(stats.beta.ppf(0.95, j, 11 - j)), rtol=1e-10)


def test_bounds_are_ordered_and_symmetric():
    lo, hi = two_level_bounds(64, 16, LEVEL)
    assert np.all(lo < hi)
    assert np.all(np.diff(lo, axis=0) > 0) and np.all(np.diff(lo, axis=1) > 0)
    np.testing.assert_allclose(hi, -lo[::-1, ::-1], atol=1e-9)  # N(0, 1) is symmetric
    lo2, hi2 = two_level_bounds(64, 16, LEVEL, ("chi2", 15))
    assert np.all(lo2 > 0) and np.all(lo2 < hi2)


def test_bounds_cover_doubly_sorted_gaussian_statistics_at_their_level():
    """Each entry of the doubly sorted statistic of fresh noise lies in its interval with probability = level."""
    m, c, level, n = 32, 4, 0.8, 4000
    lo, hi = two_level_bounds(m, c, level)
    x = torch.randn(n, m, c, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = x.sort(-1).values.sort(-2).values.numpy()
    coverage = ((t >= lo) & (t <= hi)).mean(0)
    se = math.sqrt(level * (1 - level) / n)
    assert np.abs(coverage - level).max() < 5 * se, coverage


# ----------------------------------------------------------------------------- projections
def _projections():
    return {
        "2os": lambda x: project_2os(x, 2, LEVEL),
        "2os_16": lambda x: project_2os(x, 4, LEVEL),
        "tile_stats": lambda x: project_tile_stats(x, 8, LEVEL),
        "tile_stats_rect": lambda x: project_tile_stats(x, (4, 8), LEVEL),
        "norm": project_norm,
        "block_norms": lambda x: project_block_norms(x, 4),
    }


@pytest.fixture(scope="module")
def inputs():
    shape = (4, 32, 32)
    g = torch.Generator().manual_seed(3)
    s = D.structured_inputs(shape)
    return {"noise": torch.randn(shape, generator=g) * 1.3, "smooth": s["smooth"] * 2, "ramp": s["ramp"],
            "photo": s["photo"] * 3}


@pytest.mark.parametrize("name", list(_projections()))
def test_projection_is_idempotent(name, inputs):
    """Exactly on noise; on pure structured inputs 2OS may keep a few entries ~1e-3 off (project.py docstring)."""
    P = _projections()[name]
    for key, x in inputs.items():
        y = P(x[None])
        atol = 2e-5 if key == "noise" else 1e-2
        torch.testing.assert_close(P(y), y, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("name", list(_projections()))
def test_projection_is_no_farther_than_random_feasible_points(name, inputs):
    P = _projections()[name]
    g = torch.Generator().manual_seed(4)
    for x in inputs.values():
        d = (P(x[None]) - x).norm()
        feasible = P(torch.randn(64, *x.shape, generator=g) * torch.rand(64, 1, 1, 1, generator=g) * 3)
        feasible = torch.cat([feasible, P((x + 0.3 * torch.randn(16, *x.shape, generator=g)))])
        assert torch.all(d <= (feasible - x).flatten(1).norm(dim=1) + 1e-4)


def test_2os_output_lies_in_its_confidence_set(inputs):
    x = inputs["smooth"][None]
    assert not _in_2os_set(x, 2, LEVEL)
    assert _in_2os_set(project_2os(x, 2, LEVEL), 2, LEVEL, tol=1e-5)
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(6)) * 2
    assert not _in_2os_set(z, 2, LEVEL) and _in_2os_set(project_2os(z, 2, LEVEL), 2, LEVEL, tol=1e-5)


def _two_sorts(g, lo, hi):
    """The definition of one 2OS pass (eq. 85): sort rows, sort columns, clip, scatter both sorts back."""
    s1, i1 = g.sort(-1)
    s2, i2 = s1.sort(-2)
    t = torch.minimum(torch.maximum(s2, lo), hi)
    return torch.empty_like(s1).scatter_(-1, i1, torch.empty_like(t).scatter_(-2, i2, t))


@pytest.mark.parametrize("m,c", [(64, 4), (256, 16), (8192, 4), (2048, 16)])
def test_batched_sort_clip_unsort_is_the_two_sort_definition(m, c):
    """Row-sort path (small) and packed-key path (large, one sort for every column of every matrix):
    bit-identical to the definition on tie-free input; with ties, the same values (tied entries may swap)."""
    gen = torch.Generator().manual_seed(m + c)
    g = torch.linspace(-4.5, 4.5, 3 * m * c)[torch.randperm(3 * m * c, generator=gen)].view(3, m, c)  # no ties
    assert (m * c >= PACKED_SORT_MIN) == (m >= 2048)
    lo, hi = (torch.as_tensor(b, dtype=torch.float32) for b in two_level_bounds(m, c, 0.9))
    assert torch.equal(sort_clip_unsort(g, lo, hi), _two_sorts(g, lo, hi))
    tied = (g * 4).round() / 4
    out, ref = sort_clip_unsort(tied, lo, hi), _two_sorts(tied, lo, hi)
    assert torch.equal(out.flatten(1).sort().values, ref.flatten(1).sort().values)
    # stacked matrices with their own bounds, as the tile statistics are projected
    lo2, hi2 = (torch.as_tensor(b, dtype=torch.float32) for b in two_level_bounds(m, c, 0.9, ("chi2", 3)))
    pair = torch.stack([g[:2], g[:2] * 2 + 10])
    both = sort_clip_unsort(pair, torch.stack([lo, lo2])[:, None], torch.stack([hi, hi2])[:, None])
    assert torch.equal(both[0], _two_sorts(pair[0], lo, hi)) and torch.equal(both[1], _two_sorts(pair[1], lo2, hi2))


@pytest.mark.parametrize("batch,k", [(1, 2), (1, 4), (2, 2), (2, (2, 4))])
def test_field_2os_is_the_two_sort_definition(batch, k):
    """The field-layout packed 2OS (keys built in the field's own layout, one scatter back to field indices;
    2 x 2 chunks sorted as one long row-tagged sort, chunks of >= ROW_SORT_MIN_CHUNK entries as rows) is the
    definition on the chunk matrix of ``groups``, bit for bit on tie-free input."""
    shape = (batch, 16, 64, 64)
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(21)
    x = torch.linspace(-4.5, 4.5, n)[torch.randperm(n, generator=gen)].view(shape)  # no ties
    g = groups(x, k)
    assert g[0].numel() >= PACKED_SORT_MIN
    lo, hi = (torch.as_tensor(b, dtype=torch.float32) for b in two_level_bounds(g.shape[1], g.shape[2], 0.9))
    want = ungroup(_two_sorts(g, lo, hi), k, x.shape)
    assert torch.equal(project_2os(x, k, 0.9, passes=1), want)
    assert (g.shape[-1] >= ROW_SORT_MIN_CHUNK) == (k == 4 or k == (2, 4))


@pytest.mark.parametrize("k", [2, 4, (2, 4), (4, 8), (3, 3)])
def test_patch_rows_moves_bits_unchanged(k):
    """The wide-element layout copy (patch rows moved as 8- or 16-byte elements) is the plain permuted copy,
    bit for bit, also for bit patterns that are NaNs or denormals when read as wider floats; its inverse
    restores the field, also from rows that are not contiguous (the plain copy's path)."""
    shape = (2, 3, 12, 24)
    gen = torch.Generator().manual_seed(5)
    bits = torch.randint(-2**31, 2**31 - 1, shape, generator=gen, dtype=torch.int64).to(torch.int32)
    bits.view(-1)[::7] = -1  # all-ones: a NaN in any float width
    bits.view(-1)[1::11] = 0x7FF00001  # an 8-byte signalling-NaN high word
    want = tiles(bits, k).permute(0, 1, 2, 4, 3, 5).contiguous()
    assert torch.equal(patch_rows(bits, k), want)
    assert torch.equal(patch_rows(bits.view(torch.float32), k).view(torch.int32), want)
    assert torch.equal(patch_rows_inverse(want, k, shape), bits)
    assert torch.equal(patch_rows_inverse(want.transpose(0, 1).contiguous().transpose(0, 1), k, shape), bits)


@pytest.mark.parametrize("ks", [[4, 8, 16, 32], [2, (2, 4), (4, 8)]])
def test_nested_tile_projections_compose_on_the_tile_statistics(ks, inputs):
    """Composing nested tile projections on the finest tiles' statistics (parallel-axis identity) gives the
    same field as projecting the field side after side, up to float round-off."""
    for key, x in inputs.items():
        x = x[None]
        seq = x
        for k in ks:
            seq = project_tile_stats(seq, k, LEVEL, passes=1)
        torch.testing.assert_close(project_tile_stats_nested(x, ks, LEVEL, passes=1), seq, atol=2e-4, rtol=1e-4)


def test_nested_runs_split_where_tiles_stop_nesting():
    assert nested_runs([4, 8, 16, 32]) == [[4, 8, 16, 32]]
    assert nested_runs([4, [4, 8], [12, 8], [20, 26]]) == [[4, [4, 8], [12, 8]], [[20, 26]]]
    assert nested_runs([8, 4]) == [[8], [4]]


def test_tile_projection_matches_target_statistics(inputs):
    x = inputs["ramp"][None]
    y = project_tile_stats(x, 8, LEVEL)
    g = groups(y, 8)[0].double()
    z = (g.mean(-1) * 8).reshape(4, 4, 4)
    energy = (g - g.mean(-1, keepdim=True)).square().sum(-1).reshape(4, 4, 4)
    for field, ref in ((z, ("normal",)), (energy, ("chi2", 63))):
        t = groups(field[None].float(), 2)[0].sort(-1).values.sort(-2).values.numpy()
        lo, hi = two_level_bounds(t.shape[0], 4, LEVEL, ref)
        assert np.all(t >= lo - 1e-4 * np.abs(lo) - 1e-5) and np.all(t <= hi + 1e-4 * np.abs(hi) + 1e-5)
    # each tile keeps its centred direction (Prop. B.4)
    gx = groups(x, 8)[0]
    for a, b in zip(gx, g):
        assert cos(a - a.mean(), b - b.mean()) > 0.9999


def _in_2os_set(x, k, level, tol=1e-2):
    t = groups(x, k)[0].sort(-1).values.sort(-2).values.numpy()
    lo, hi = two_level_bounds(t.shape[0], t.shape[1], level)
    return bool(np.all(t >= lo - tol) and np.all(t <= hi + tol))


# ----------------------------------------------------------------------------- orthogonal domains
DOMAINS = [("fourier", 0, None), ("hadamard", 0, None), ("hadamard", 0, 3), ("hadamard", 8, None), ("hadamard", (4, 8), 2)]


@pytest.mark.parametrize("name,tile,mix", DOMAINS)
def test_domains_are_orthogonal(name, tile, mix):
    dom = make_domain(name, tile, mix)
    shape = (2, 16, 32)
    eye = torch.eye(math.prod(shape), dtype=torch.float64).reshape(-1, *shape)
    Q = dom.forward(eye).reshape(eye.shape[0], -1)  # rows: images of the basis vectors, i.e. Q^T
    torch.testing.assert_close(Q @ Q.T, torch.eye(Q.shape[0], dtype=torch.float64), atol=1e-10, rtol=0)
    x = torch.randn(3, *shape, dtype=torch.float64)
    torch.testing.assert_close(dom.inverse(dom.forward(x)), x)


def test_full_butterfly_mixing_is_the_walsh_hadamard_transform():
    from scipy.linalg import hadamard

    n = 64
    Q = make_domain("hadamard", 0, None).forward(torch.eye(n, dtype=torch.float64).reshape(n, 1, 8, 8)).reshape(n, n)
    H = hadamard(n) / math.sqrt(n)
    rows = {tuple(np.round(r * math.sqrt(n)).astype(int)) for r in Q.T.numpy()}
    assert rows == {tuple(np.round(r * math.sqrt(n)).astype(int)) for r in H}


@pytest.mark.parametrize("shape,tile", [((4, 16, 16), 0), ((2, 8, 32), 0), ((3, 16, 16), 8), ((3, 8, 16), (4, 8))])
def test_hadamard_matrix_products_are_the_butterfly_stages(shape, tile):
    """log2(n) butterfly stages = Sylvester-ordered H_n: the matrix-product form keeps the coefficient order
    (which coefficients share a 2OS chunk), not only the set of basis vectors."""
    x = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    if tile == 0:
        v = x.flatten(1)
        want = butterfly(v, int(math.log2(v.shape[-1]))).reshape(x.shape)
        torch.testing.assert_close(hadamard_along(v, hadamard_factors(v.shape[-1], max_bits=3)).reshape(x.shape), want)
    else:
        n = math.prod((tile, tile) if isinstance(tile, int) else tile)
        want = ungroup(butterfly(groups(x, tile), int(math.log2(n))), tile, x.shape)
    torch.testing.assert_close(make_domain("hadamard", tile).forward(x), want, atol=1e-12, rtol=0)


def test_compact_fourier_matches_the_orthonormal_dft():
    from ntrk_bench.whitening.domains import compact_rfft

    x = torch.randn(5, 12, dtype=torch.float64)
    y = compact_rfft(x)
    f = np.fft.rfft(x.numpy(), norm="ortho")
    np.testing.assert_allclose(y[:, 0], f[:, 0].real)
    np.testing.assert_allclose(y[:, -1], f[:, -1].real)
    np.testing.assert_allclose(y[:, 1:-1:2], math.sqrt(2) * f[:, 1:-1].real, atol=1e-12)
    np.testing.assert_allclose(y[:, 2:-1:2], math.sqrt(2) * f[:, 1:-1].imag, atol=1e-12)


@pytest.mark.parametrize("name,tile,mix", DOMAINS[:4])
def test_projecting_in_a_domain_projects_onto_the_pulled_back_set(name, tile, mix, inputs):
    """Prop. B.5: Q^T P_S(Q x) is the projection of x onto Q^T S."""
    dom = make_domain(name, tile, mix)
    P = lambda x: dom.inverse(project_2os(dom.forward(x), 2, LEVEL))  # noqa: E731
    g = torch.Generator().manual_seed(5)
    for x in inputs.values():
        x = x[None]
        y = P(x)
        # y is in the pulled-back set: the doubly sorted statistic of Q y lies in its box (up to round-off,
        # and up to the documented residual of 2OS on pure structured inputs)
        assert _in_2os_set(dom.forward(y), 2, LEVEL)
        # and no random point of the pulled-back set is closer to x
        others = P(torch.randn(48, *x.shape[1:], generator=g) * 1.5)
        assert torch.all((y - x).norm() <= (others - x).flatten(1).norm(dim=1) + 1e-4)


# ----------------------------------------------------------------------------- the full operator
def test_fresh_noise_passes_essentially_unchanged(W):
    z = torch.randn(6, *FLUX, generator=torch.Generator().manual_seed(7))
    out = W(z)
    assert min(cos(o, x) for o, x in zip(out, z)) >= 0.9999


def test_structured_inputs_come_out_with_gaussian_statistics(W, noise_ref):
    """Value KS, per-tile chi-square KS and spectral flatness of whitened structured inputs fall in the range
    that fresh noise shows (64 draws); before whitening they are far outside it.

    Known shortfall (measured, kept visible here rather than hidden in a tolerance): the whitened ramp and
    photograph keep a slight low-frequency excess - their flatness is 0.554-0.556 against a noise range
    starting at 0.556 - because every projection preserves the input's rank order, which for these inputs
    is ordered by frequency. The test pins that shortfall at under 1% of the noise minimum.
    """
    ref = noise_ref
    for name, x in D.structured_inputs(FLUX).items():
        before = D.typicality(x, FLUX)
        assert before["spectral_flatness"] < 0.45 and before["tile_energy_ks"] > 0.1, (name, before)
        y = W(x[None])[0]
        after = D.typicality(y, FLUX)
        for s in ("value_ks", "tile_energy_ks"):
            assert ref[s][0] <= after[s] <= ref[s][1], (name, s, after[s], ref[s])
        lo, hi = ref["spectral_flatness"]
        if name in ("smooth", "checkerboard"):
            assert lo <= after["spectral_flatness"] <= hi, (name, after["spectral_flatness"], ref["spectral_flatness"])
        else:
            assert 0.99 * lo <= after["spectral_flatness"] <= hi, (name, after["spectral_flatness"], ref["spectral_flatness"])
        assert abs(cos(y, x)) < 0.2, name


def test_batch_dims_dtypes_and_scale(W):
    z = torch.randn(2, 3, *FLUX, generator=torch.Generator().manual_seed(8))
    z[0, 1] = D.structured_inputs(FLUX)["smooth"]
    out = W(z)
    assert out.shape == z.shape
    torch.testing.assert_close(out[0, 1], W(z[0, 1][None])[0])
    torch.testing.assert_close(W(2.0 ** -20 * z), out)  # explicit RMS normalisation: scale-free
    bf = W(z.bfloat16())
    assert bf.dtype == torch.float32 and out.dtype == torch.float32  # computes and returns float32
    assert cos(bf[1, 2], out[1, 2]) > 0.999


def test_census_sees_host_syncs():
    x = torch.ones(3)
    with OpCensus() as census:
        x.sum().item()
        bool((x > 0).all())
        x.nonzero()
    assert census.n_syncs == 3, dict(census.syncs)


@pytest.mark.parametrize("name,shape", [("full", FLUX), ("full_wan", (2, 1, 60, 104))])
def test_no_host_sync_and_no_value_dependent_branch(name, shape):
    """The default path reads nothing back to the host: no sync op in a dispatch census, and it runs on
    meta tensors, which carry no values (``.item()``, ``bool(t)``, ``.tolist()`` or ``nonzero`` raise there, as
    does a CPU tensor mixed into the computation). The kernel count (ops that launch work) is the budget
    of one FLUX call."""
    W = Whitening(load_group("whitening", name), shape)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(13))
    W(x)  # the first call also builds the device's tables
    with OpCensus() as census:
        W(x)
    assert census.n_syncs == 0, dict(census.syncs)
    if shape == FLUX:
        assert census.kernels <= 1600, census.kernels
    out = W(torch.empty(2, *shape, device="meta", dtype=torch.bfloat16))
    assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == (2, *shape)


def test_output_is_a_normal_tensor(W):
    """W runs in inference mode inside, but what it returns can be updated in place and enter a graph."""
    g = torch.randn(1, *FLUX, generator=torch.Generator().manual_seed(3))
    out = W(g)
    assert not out.is_inference()
    out.mul_(2.0)  # an inference tensor refuses in-place updates outside inference mode
    lat = torch.zeros(1, *FLUX, requires_grad=True)
    (lat * out).sum().backward()  # and cannot be saved for backward
    assert torch.equal(lat.grad, out)


def test_comparators():
    g = torch.Generator().manual_seed(9)
    x = 1e-3 * D.structured_inputs(FLUX)["smooth"][None]
    z = torch.randn(4, *FLUX, generator=g)
    ident = Whitening(load_group("whitening", "identity"), FLUX)
    torch.testing.assert_close(ident(x), x)
    norm = Whitening(load_group("whitening", "norm"), FLUX)
    assert norm(x).norm().item() == pytest.approx(math.sqrt(math.prod(FLUX)), rel=1e-5)
    assert cos(norm(x), x) > 0.99999
    wgnc = Whitening(load_group("whitening", "wgnc"), FLUX)
    full = Whitening(load_group("whitening", "full"), FLUX)
    # WGNC's hard equalities distort genuine noise far more than the confidence-interval operator (App. B.7)
    c_wgnc = min(cos(a, b) for a, b in zip(wgnc(z), z))
    c_full = min(cos(a, b) for a, b in zip(full(z), z))
    assert c_wgnc < 0.999 < 0.9999 <= c_full


def test_ablation_components_whiten_progressively(noise_ref):
    x = D.structured_inputs(FLUX)["smooth"][None]
    lo, hi = noise_ref["spectral_flatness"]
    flat = {n: D.spectral_flatness(Whitening(load_group("whitening", n), FLUX)(x)[0], FLUX) for n in ("twoos", "tiles", "full")}
    # entrywise and tile constraints alone leave the spectrum of a smooth field structured (Fig. 13's first
    # rows); the orthogonal domains are what flattens it
    assert flat["twoos"] < 0.1 and flat["tiles"] < 0.1 and 0.99 * lo <= flat["full"] <= hi, flat


def test_rectangular_patches_and_video_latents():
    shape = (4, 3, 12, 16)  # (C, F, H, W): folded to a (12, 12, 16) field
    cfg = load_group("whitening", "full")
    for b in cfg.blocks:
        b.tiles = [2, [4, 8]]
        if b.domain == "hadamard" and b.tile:
            b.tile = [4, 8]
    W = Whitening(cfg, shape)
    z = torch.randn(2, *shape, generator=torch.Generator().manual_seed(10))
    assert min(cos(a, b) for a, b in zip(W(z), z)) > 0.999


def test_bad_configuration_is_a_clear_error():
    cfg = load_group("whitening", "full")
    with pytest.raises(ValueError, match="does not tile"):
        Whitening(cfg, (16, 60, 104))
    with pytest.raises(ValueError, match="event shape"):
        Whitening(cfg, FLUX)(torch.randn(2, 16, 32, 32))
