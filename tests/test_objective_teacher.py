"""Which network answers each call of a TwinFlow step (official twinflow.py, design doc 1.5 / 1.7):

| call                          | EMA 0 < d < 1 | d = 0 (no copy) | d = 1 (frozen copy)            |
|-------------------------------|---------------|-----------------|--------------------------------|
| adv fake samples F(z', 1, 0)  | online        | online          | online                         |
| CFG teacher f_c, f_u          | EMA copy      | online          | frozen copy                    |
| RCGM rollout                  | EMA copy      | online          | online (official model_4_rcgm) |
| velocity gap dv (both signs)  | online        | online          | online                         |

Calls are classified row by row (so batching several calls into one forward does not matter): a no-grad row is
the generator if (t, r) = (1, 0); the twin branch of dv if t < 0; the real branch of dv if t = r and -t was a
twin-branch time; CFG if t = r is one of the grad forward's times; otherwise an RCGM rollout sub-step.
"""

import pytest
import torch

from twinflow_core.ema import EMA
from twinflow_core.nets import build_net
from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective

BATCH, CLASSES = 12, 3
NULL = CLASSES


class Recorder:
    def __init__(self):
        self.rows = []  # (network, t, r, cond, grad) per row, in call order

    def hook(self, name):
        def record(module, args, out):
            x, t, r, cond = args
            for i in range(x.shape[0]):
                self.rows.append((name, float(t[i]), float(r[i]), int(cond[i]), out.requires_grad))

        return record


def classify(rows):
    grad = [row for row in rows if row[4]]
    assert len({row[0] for row in grad}) == 1 and grad[0][0] == "online"
    grad_times = {row[1] for row in grad}
    nograd = [row for row in rows if not row[4]]
    twin_times = {row[1] for row in nograd if row[1] < 0}
    kinds = {}
    for name, t, r, cond, _ in nograd:
        if t == 1.0 and r == 0.0:
            kind = "generator"
        elif t < 0:
            kind = "dv"
        elif t == r and -t in twin_times:
            kind = "dv"
        elif t == r and t in grad_times:
            kind = "cfg_uncond" if cond == NULL else "cfg_cond"
        else:
            kind = "rcgm"
        kinds.setdefault(kind, set()).add(name)
    return kinds


def run(emd, *, image_free=False):
    torch.manual_seed(0)
    net = build_net("mlp2d", hidden=16, depth=2, time_dim=8, num_classes=CLASSES)
    ema = EMA(net, emd)
    rec = Recorder()
    net.register_forward_hook(rec.hook("online"))
    if ema.model is not None:
        ema.model.register_forward_hook(rec.hook("frozen" if emd == 1.0 else "ema"))
    torch.manual_seed(1)
    x, c = torch.randn(BATCH, 2), torch.randint(0, CLASSES, (BATCH,))
    cfg = ObjectiveConfig.preset("twinflow", enhanced_ratio=0.8, image_free=image_free)
    TwinFlowObjective(cfg)(net, x, c, torch.full((BATCH,), NULL), ema=ema)
    return classify(rec.rows)


EXPECTED = {
    0.99: {"generator": {"online"}, "cfg_cond": {"ema"}, "cfg_uncond": {"ema"}, "rcgm": {"ema"}, "dv": {"online"}},
    0.0: {
        "generator": {"online"},
        "cfg_cond": {"online"},
        "cfg_uncond": {"online"},
        "rcgm": {"online"},
        "dv": {"online"},
    },
    1.0: {
        "generator": {"online"},
        "cfg_cond": {"frozen"},
        "cfg_uncond": {"frozen"},
        "rcgm": {"online"},
        "dv": {"online"},
    },
}


@pytest.mark.parametrize("emd", sorted(EXPECTED))
def test_each_target_uses_the_official_network(emd):
    assert run(emd) == EXPECTED[emd]


def test_image_free_fake_data_come_from_the_online_net():
    kinds = run(1.0, image_free=True)
    assert kinds == EXPECTED[1.0]
