"""Log your own training loop into NormLab: a ResNet-style CNN on the 8x8 digits and a
small pre-LN transformer on token sequences, each trained by a plain PyTorch loop.

    python docs/examples/own_loop.py          # then open the dashboard: Runs / Compare
"""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import normlab

STEPS = 300


class Block(nn.Module):  # torchvision's BasicBlock: one ReLU module, used twice
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


resnet = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), Block(16), Block(16),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


class PreLN(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


transformer = nn.Sequential(nn.Embedding(16, 32), PreLN(32), PreLN(32), nn.LayerNorm(32))
head = nn.Linear(32, 16)  # predicts the sequence's most frequent token


def train(model, name, batches, loss_of, steps=STEPS):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with normlab.log(model, name=name, config={"lr": 0.05, "momentum": 0.9}, every=5,
                     total_steps=steps) as run:
        for step in range(steps):
            x, y = next(batches)
            run.arm(step)
            loss, acc = loss_of(x, y)
            run.after_forward()
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.after_update(loss=loss.item(), acc=acc)
    return run.run_id


def digits():
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    gen = torch.Generator().manual_seed(0)
    while True:
        idx = torch.randint(0, len(y), (64,), generator=gen)
        yield x[idx], y[idx]


def tokens():
    gen = torch.Generator().manual_seed(0)
    while True:
        seq = torch.randint(0, 16, (32, 12), generator=gen)
        yield seq, torch.mode(seq, dim=1).values


def cnn_loss(x, y):
    out = resnet(x)
    return F.cross_entropy(out, y), (out.argmax(1) == y).float().mean().item()


model = nn.Sequential(transformer, head)


def lm_loss(x, y):
    out = head(transformer(x).mean(1))
    return F.cross_entropy(out, y), (out.argmax(1) == y).float().mean().item()


if __name__ == "__main__":
    print("resnet:", train(resnet, "resnet-ish (BN)", digits(), cnn_loss))
    print("transformer:", train(model, "pre-LN transformer", tokens(), lm_loss))
