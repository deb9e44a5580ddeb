"""Is the steer threshold's seed spread the cross-fitting folds' or the anchor split's? (dev only)

    PYTHONPATH=src python bench/dev_decision/p12_fold_seeds.py --anchor-seeds 1,2 --fold-seeds 0,1,2,3,4 --splits 32

For each anchor seed (the seeded fit / held-out split of the shipped anchors, as ``scans fit
--seed``), the anchors' activations are collected once; the classifiers and the v2 rule's
calibration then run with the cross-fitting folds drawn from each fold seed. Prints the steer
thresholds: their spread within an anchor seed is the folds', the gap between anchor seeds the
split's. Reads only the project's own anchors and pool.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from scans.api import Scans
from scans.fit_classify import calibrate_rule, fit_classifiers
from scans.fit_config import FitConfig
from scans.fit_data import build_anchors, collect_activations, refusal_vectors
from scans.layers import classification_layers
from scans.refusal import first_token_refuses
from scans.vectors import reference_transition, transitions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchor-seeds", default="1,2")
    ap.add_argument("--fold-seeds", default="0,1,2,3,4")
    ap.add_argument("--splits", type=int, default=32)
    args = ap.parse_args()
    scans = Scans.from_pretrained("embedded")
    for a in map(int, args.anchor_seeds.split(",")):
        config = FitConfig(seed=a)
        anchors = build_anchors(None, None, None, config)
        acts = collect_activations(
            scans.model,
            scans.tokenizer,
            anchors,
            config,
            batch_size=16,
            layers_path=scans.layers_path,
            progress=False,
        )
        vec = refusal_vectors(acts, config)
        reference = reference_transition(transitions(acts.harmful.inst, acts.harmful.probe))
        last = torch.cat([g.inst[:, -1] for g in (acts.harmful, acts.harmless, acts.borderline, acts.held)])
        refused = first_token_refuses(scans.model, scans.tokenizer, last).numpy()
        layers = classification_layers(vec.vectors.shape[0])
        out = []
        for f in map(int, args.fold_seeds.split(",")):
            cfg = dataclasses.replace(config, seed=f, crossfit_splits=args.splits)
            cls = fit_classifiers(acts, anchors, cfg, layers, reference)
            cal = calibrate_rule(acts, anchors, cfg, cls, vec, layers, refused, acts)
            out.append(cal.rule.steer_threshold)
            print(
                f"anchor seed {a} fold seed {f} splits {args.splits}: steer {cal.rule.steer_threshold:.4f} "
                f"threshold {cal.stats['threshold']:.4f}",
                flush=True,
            )
        print(f"anchor seed {a}: mean {np.mean(out):.4f} sd {np.std(out, ddof=1):.4f}", flush=True)


if __name__ == "__main__":
    main()
