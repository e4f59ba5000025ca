"""`distill`: the main job. (Placeholder until the teacher/student pipeline lands: fits a MAF
to two moons and writes a plot of data vs samples.)"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import make_moons  # noqa: E402

from distill.flows import build_maf  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    data = torch.as_tensor(make_moons(4000, noise=0.05, random_state=0)[0], dtype=torch.float32)
    flow = build_maf(2, num_layers=5, hidden_features=(64, 64))
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for step in range(1500):
        batch = data[torch.randint(len(data), (256,))]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 300 == 0:
            print(f"step {step:5d}  nll {loss.item():.3f}")
    samples = flow.sample((2000,))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    axes[0].scatter(*data[:2000].T, s=1)
    axes[0].set_title("data")
    axes[1].scatter(*samples.T, s=1, color="C1")
    axes[1].set_title("MAF samples")
    fig.savefig("moons_demo.png", dpi=100)
    print(f"final nll {loss.item():.3f}; wrote moons_demo.png")
