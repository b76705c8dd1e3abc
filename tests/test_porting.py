"""Porting from the VAE code people already have: each peer's loss formula, written as the peer writes it,
against the fastvae call the README's porting section gives for it (float64, random inputs, values and
gradients)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastvae as fv

F64 = torch.float64
B, C, H, W, J = 5, 1, 6, 7, 4
D = C * H * W


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(B, C, H, W, generator=g, dtype=F64)).requires_grad_()
    x = torch.rand(B, C, H, W, generator=g, dtype=F64)
    mu = torch.randn(B, J, generator=g, dtype=F64).requires_grad_()
    logvar = (0.5 * torch.randn(B, J, generator=g, dtype=F64)).requires_grad_()
    return logits, x, mu, logvar


def _kld_rows(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def _same(peer, ours, leaves):
    torch.testing.assert_close(ours, peer, rtol=1e-12, atol=1e-12)
    g_peer = torch.autograd.grad(peer, leaves, retain_graph=True)
    g_ours = torch.autograd.grad(ours, leaves)
    for a, b in zip(g_ours, g_peer):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_pytorch_examples_vae():
    """pytorch/examples vae/main.py: a sigmoid decoder, BCE summed over the batch plus the summed KLD.
    fastvae: drop the sigmoid (pass logits) and take reduction='sum'."""
    logits, x, mu, logvar = _inputs(1)
    recon = torch.sigmoid(logits)                                   # the example's decoder output
    peer = F.binary_cross_entropy(recon.view(B, -1), x.view(B, -1), reduction="sum") + _kld_rows(mu, logvar).sum()
    ours = fv.beta_vae_loss(logits, x, mu, logvar, beta=1.0, reduction="sum").loss
    _same(peer, ours, [logits, mu, logvar])


def test_probabilities_passed_as_logits_give_another_loss():
    """The mistake the porting section warns about: keeping the sigmoid computes a different objective."""
    logits, x, mu, logvar = _inputs(2)
    right = fv.beta_vae_loss(logits, x, mu, logvar, reduction="sum").loss
    wrong = fv.beta_vae_loss(torch.sigmoid(logits), x, mu, logvar, reduction="sum").loss
    assert abs(wrong.item() - right.item()) > 0.01 * abs(right.item())


@pytest.mark.parametrize("loss_type", ["H", "B"])
def test_antixk_beta_vae(loss_type):
    """AntixK/PyTorch-VAE BetaVAE: F.mse_loss (a mean over every pixel of the batch) plus
    beta * kld_weight * KLD (or gamma * kld_weight * |KLD - C| with C of shape (1,)), kld_weight = M_N.
    fastvae: likelihood='mse', beta * M_N * D, the loss divided by D (D = C*H*W); C as it is."""
    recon, x, mu, logvar = _inputs(3)
    beta, gamma, m_n = 4.0, 1000.0, 0.0125
    capacity = torch.tensor([2.5], dtype=F64)                        # torch.Tensor([max_capacity]) clamped
    recons_loss = F.mse_loss(recon, x)
    kld_loss = torch.mean(_kld_rows(mu, logvar), dim=0)
    if loss_type == "H":
        peer = recons_loss + beta * m_n * kld_loss
        ours = fv.beta_vae_loss(recon, x, mu, logvar, likelihood="mse", beta=beta * m_n * D).loss / D
    else:
        peer = (recons_loss + gamma * m_n * (kld_loss - capacity).abs()).squeeze(0)
        ours = fv.beta_vae_loss(recon, x, mu, logvar, likelihood="mse", beta=gamma * m_n * D,
                                capacity=capacity).loss / D
    _same(peer, ours, [recon, mu, logvar])


@pytest.mark.parametrize("regularizer", ["beta", "annealed"])
def test_disentanglement_lib(regularizer):
    """disentanglement_lib (methods/unsupervised/vae.py with shared/losses.py): bernoulli_loss with
    activation 'logits' summed per image, its batch mean, plus beta * the batch-mean KL (BetaVAE) or
    gamma * |KL - c| (AnnealedVAE).  fastvae: likelihood='bernoulli' (logits), reduction='mean',
    beta (with capacity=c for the annealed form)."""
    logits, x, mu, logvar = _inputs(4)
    per_sample = F.binary_cross_entropy_with_logits(logits.reshape(B, -1), x.reshape(B, -1),
                                                    reduction="none").sum(1)
    reconstruction_loss = per_sample.mean()
    kl_loss = (0.5 * (mu.square() + logvar.exp() - logvar - 1).sum(1)).mean()
    if regularizer == "beta":
        peer = reconstruction_loss + 6.0 * kl_loss
        ours = fv.beta_vae_loss(logits, x, mu, logvar, beta=6.0).loss
    else:
        peer = reconstruction_loss + 1000.0 * (kl_loss - 1.5).abs()
        ours = fv.beta_vae_loss(logits, x, mu, logvar, beta=1000.0, capacity=1.5).loss
    _same(peer, ours, [logits, mu, logvar])


@pytest.mark.parametrize("reconstruction", ["bce", "mse"])
def test_pythae_beta_vae(reconstruction):
    """pythae BetaVAE: per-sample BCE on probabilities (a sigmoid decoder) or 0.5 * the per-sample squared
    error, plus beta * KLD, averaged over the batch.  fastvae: 'bce' -> likelihood='bernoulli' on the
    logits (drop the sigmoid); 'mse' -> likelihood='mse' with 2 * beta, the loss halved."""
    logits, x, mu, logvar = _inputs(5)
    beta = 3.0
    kld = _kld_rows(mu, logvar)
    if reconstruction == "bce":
        recon = torch.sigmoid(logits)
        rows = F.binary_cross_entropy(recon.reshape(B, -1), x.reshape(B, -1), reduction="none").sum(dim=-1)
        peer = (rows + beta * kld).mean(dim=0)
        ours = fv.beta_vae_loss(logits, x, mu, logvar, beta=beta).loss
    else:
        rows = 0.5 * F.mse_loss(logits.reshape(B, -1), x.reshape(B, -1), reduction="none").sum(dim=-1)
        peer = (rows + beta * kld).mean(dim=0)
        ours = fv.beta_vae_loss(logits, x, mu, logvar, likelihood="mse", beta=2 * beta).loss / 2
    _same(peer, ours, [logits, mu, logvar])


def test_rate_and_mu_logvar_forms_agree_on_the_same_noise():
    """The README's before/after: with the same eps both forms give the eager lines' numbers."""
    logits, x, mu, logvar = _inputs(6)
    eps = torch.randn(B, J, generator=torch.Generator().manual_seed(9), dtype=F64)
    z_eager = mu + torch.exp(0.5 * logvar) * eps
    z, rate = fv.reparameterize_kl(mu, logvar, eps, reduction="none")
    torch.testing.assert_close(z, z_eager, rtol=1e-14, atol=1e-14)
    a = fv.beta_vae_loss(logits, x, rate=rate, beta=4.0)
    b = fv.beta_vae_loss(logits, x, mu, logvar, beta=4.0)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-14, atol=1e-14)
