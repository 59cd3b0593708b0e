"""DDPM noise schedule and DDPM/DDIM update rules for an x0-predicting network. Holds no weights.

Notation (Ho et al. arXiv 2006.11239; Song et al. DDIM arXiv 2010.02502):
  T                 number of diffusion steps (num_timesteps), t in {0, ..., T-1}
  betas[t]          noise variance added at step t (linear from beta_start to beta_end)
  alphas[t]         1 - betas[t]
  alphas_cumprod[t] abar_t = prod_{s<=t} alphas[s]
  x0                clean image;  x0_pred: the network's estimate of x0
  x_t               sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps,  eps ~ N(0, I)
  eps_pred          noise implied by (x_t, x0_pred)
  t_prev            the next (smaller) timestep of a respaced sequence; -1 after the last step,
                    where abar_{-1} := 1 so the update returns x0_pred

Timesteps given to the step functions may be Python ints or (B,) long tensors; images are (B, ...).
Schedule tensors live on the CPU and are moved to the data's device when indexed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class NoiseSchedule:
    """Linear beta schedule (float64 arithmetic, float32 storage) with add_noise / ddim_step / ddpm_step.

    betas are linspace(beta_start, beta_end, T) exactly as given: unlike guided-diffusion's "linear" schedule
    they are not rescaled by 1000/T (identical for the reference T = 1000).
    """

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, found {num_timesteps}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, found {beta_start}, {beta_end}")
        self.num_timesteps = num_timesteps
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        abar = torch.cumprod(1.0 - betas, dim=0)
        self.betas = betas.float()
        self.alphas = (1.0 - betas).float()
        self.alphas_cumprod = abar.float()
        # abar_t in float64 with abar_{-1} = 1 at index 0: the step rules index it with t + 1
        self._abar64_padded = torch.cat([torch.ones(1, dtype=torch.float64), abar])
        # square roots taken in float64 before rounding, as guided-diffusion does in NumPy
        self.sqrt_alphas_cumprod = abar.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt().float()

    def __repr__(self) -> str:
        return (f"NoiseSchedule(num_timesteps={self.num_timesteps}, beta_start={self.betas[0].item():.3g}, "
                f"beta_end={self.betas[-1].item():.3g})")

    # ------------------------------------------------------------------ helpers
    def _abar(self, t: int | Tensor, like: Tensor) -> Tensor:
        """abar_t broadcastable to `like` (B, ...); t = -1 gives 1. Returned in like's dtype and device."""
        t = torch.as_tensor(t, dtype=torch.long)
        abar = self._abar64_padded[(t + 1).cpu()]
        abar = abar.to(device=like.device, dtype=like.dtype)
        return abar.reshape(-1, *([1] * (like.dim() - 1))) if abar.dim() else abar

    def _check_t(self, t: int | Tensor, allow_minus_one: bool = False) -> None:
        t = torch.as_tensor(t)
        low = -1 if allow_minus_one else 0
        if (t < low).any() or (t >= self.num_timesteps).any():
            raise ValueError(f"timesteps must lie in [{low}, {self.num_timesteps - 1}], found {t.tolist()}")

    # ------------------------------------------------------------------ forward process
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """q(x_t | x0): x0, noise (B, ...), t (B,) long -> x_t (B, ...)."""
        t = t.to("cpu", torch.long)
        shape = (-1, *([1] * (x0.dim() - 1)))
        a = self.sqrt_alphas_cumprod[t].to(x0.device, x0.dtype).reshape(shape)
        s = self.sqrt_one_minus_alphas_cumprod[t].to(x0.device, x0.dtype).reshape(shape)
        return a * x0 + s * noise

    def predict_eps_from_x0(self, x_t: Tensor, x0_pred: Tensor, t: int | Tensor) -> Tensor:
        """eps_pred = (x_t - sqrt(abar_t) x0_pred) / sqrt(1 - abar_t)."""
        abar = self._abar(t, x_t)
        return (x_t - abar.sqrt() * x0_pred) / (1.0 - abar).sqrt()

    # ------------------------------------------------------------------ respacing
    def timesteps(self, num_steps: int, spacing: str = "leading", start: int | None = None) -> list[int]:
        """Descending timesteps to sample with: the one timestep rule (as diffusers' `set_timesteps`).

        "leading" (the reference's DDIM respacing, guided-diffusion): t_i = floor(i T / n), i = 0..n-1, reversed;
            100 of 1000 -> 990, 980, ..., 0 (exactly range(0, T, T // n) when n divides T). With few steps it
            starts far below T (1 step: t = 0; 2 steps: 500, 0), treating pure noise x_T as almost clean.
        "trailing": T - 1 - floor(i T / n) = 999, 989, ..., 9 for 100 of 1000: always starts at T - 1, where x_T
            is pure noise (Lin et al., arXiv 2305.08891, Table 2); 1 step is one x0 prediction from x_T.
        "linspace" from `start` (partial diffusion, AnoDDPM-style: the image was noised to t = start):
            round(linspace(start, 0, n)), repeats removed: 500 in 6 steps -> 500, 400, ..., 0; 1 step -> [start].
        """
        if spacing == "linspace":
            start = self.num_timesteps - 1 if start is None else start
            self._check_t(start)
            ts = torch.linspace(start, 0, max(1, num_steps)).round().long().unique_consecutive()
            return ts.tolist()
        if start is not None:
            raise ValueError(f"a partial start (start={start}) needs spacing 'linspace', not '{spacing}'")
        if not 1 <= num_steps <= self.num_timesteps:
            raise ValueError(f"num_steps must be in [1, {self.num_timesteps}], found {num_steps}")
        steps = [(i * self.num_timesteps) // num_steps for i in range(num_steps)]
        if spacing == "leading":
            return steps[::-1]
        if spacing == "trailing":
            return [self.num_timesteps - 1 - s for s in steps]
        raise ValueError(f"unknown timestep spacing '{spacing}': expected leading, trailing or linspace")

    # ------------------------------------------------------------------ reverse updates
    def ddim_step(self, x_t: Tensor, x0_pred: Tensor, t: int | Tensor, t_prev: int | Tensor,
                  eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
        """One DDIM update x_t -> x_{t_prev} (arXiv 2010.02502, Eq. 12); t_prev = -1 returns x0_pred.

        1. eps_pred = (x_t - sqrt(abar_t) x0_pred) / sqrt(1 - abar_t)
        2. sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)   (Eq. 16)
        3. x_prev = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma^2) eps_pred + sigma * noise
        """
        self._check_t(t)
        self._check_t(t_prev, allow_minus_one=True)
        abar_t, abar_prev = self._abar(t, x_t), self._abar(t_prev, x_t)
        eps = self.predict_eps_from_x0(x_t, x0_pred, t)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t)).sqrt() * (1 - abar_t / abar_prev).sqrt()
        x_prev = abar_prev.sqrt() * x0_pred + (1 - abar_prev - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0:
            if noise is None:
                raise ValueError("ddim_step with eta > 0 needs `noise` (draw it from your generator)")
            x_prev = x_prev + sigma * noise
        return x_prev

    def posterior_variance(self, t: int | Tensor, t_prev: int | Tensor | None = None, like: Tensor | None = None
                           ) -> Tensor:
        """Variance of q(x_{t_prev} | x_t, x0): (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev).

        t_prev defaults to t - 1 (consecutive steps); it is 0 at t = 0. Returned broadcastable to `like`.
        """
        like = like if like is not None else torch.zeros(1)
        t_prev = torch.as_tensor(t) - 1 if t_prev is None else t_prev
        abar_t, abar_prev = self._abar(t, like), self._abar(t_prev, like)
        return (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)

    def ddpm_step(self, x_t: Tensor, x0_pred: Tensor, t: int | Tensor, noise: Tensor,
                  t_prev: int | Tensor | None = None) -> Tensor:
        """Ancestral DDPM update: sample q(x_{t_prev} | x_t, x0 = x0_pred) (arXiv 2006.11239, Eqs. 6-7).

        With t_prev = None the step is to t - 1. For a respaced sequence pass t_prev: the effective
        beta' = 1 - abar_t / abar_prev (guided-diffusion `respace.py`). At t = 0 the variance is 0 and
        the result is x0_pred.
          mean = sqrt(abar_prev) beta' / (1 - abar_t) * x0_pred + sqrt(1 - beta') (1 - abar_prev) / (1 - abar_t) * x_t
        """
        self._check_t(t)
        t_prev = torch.as_tensor(t) - 1 if t_prev is None else t_prev
        self._check_t(t_prev, allow_minus_one=True)
        abar_t, abar_prev = self._abar(t, x_t), self._abar(t_prev, x_t)
        beta = 1 - abar_t / abar_prev
        mean = (abar_prev.sqrt() * beta / (1 - abar_t)) * x0_pred + ((1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)) * x_t
        var = (1 - abar_prev) / (1 - abar_t) * beta
        return mean + var.sqrt() * noise


def ddim_loop(predict_x0: Callable[[Tensor, int], Tensor], x_T: Tensor, timesteps: Sequence[int],
              schedule: NoiseSchedule, eta: float = 0.0, draw_noise: Callable[[], Tensor] | None = None) -> Tensor:
    """The DDIM loop of every x0-predicting model here (the convention of mmccd.models): returns the last x0_pred.

    For each t of the descending `timesteps`: 1. x0_pred = predict_x0(x, t) (the caller draws any per-step
    noise of its own inside, e.g. MMCCD's condition refill); 2. after the last t, return x0_pred; else
    3. with eta > 0 draw the DDIM noise (`draw_noise()`, after step 1's draws) and 4. x = ddim_step(x, x0_pred,
    t, t_prev). x_T (B, ...) is the start (pure noise, or a partially noised image)."""
    x = x_T
    for i, t in enumerate(timesteps):
        x0_pred = predict_x0(x, t)
        if i + 1 == len(timesteps):
            return x0_pred
        if eta > 0 and draw_noise is None:
            raise ValueError("ddim_loop with eta > 0 needs draw_noise (draw it from your generator)")
        noise = draw_noise() if eta > 0 else None  # type: ignore[misc]
        x = schedule.ddim_step(x, x0_pred, t, timesteps[i + 1], eta=eta, noise=noise)
    raise ValueError("ddim_loop needs at least one timestep")


__all__ = ["NoiseSchedule", "ddim_loop"]
