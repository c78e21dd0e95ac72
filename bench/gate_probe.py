"""Where the LM and the match scores disagree at inference (issue 14: objects.sure_gate, list_sure).

On validation scenes (the evaluator's v1 + v2 requests from ``--seed``; keep them away from the
evaluation seeds) every chat turn is answered through the pipeline while the object-token decoder
records what it saw: the turn's match probabilities, the LM's probability of starting the answer
by grounding (``<p>`` or ``<loc>``), and after each ``<loc>`` the LM's probability of going on
(any token but ``</s>``, ":" and ".") and the best match score among the proposals not grounded
yet. Reported:

- ``target_none``: turns with a target that ground nothing -- how many, how many of them the LM
  wanted to ground (its probability >= ``--sure``) while every match score was under the match gate;
- ``no_target``: turns whose answer is "there is none" -- the LM's probability of grounding
  (quantiles) and how many reach ``--sure`` (what a sure gate there would cost);
- ``stopped_listings``: listings (counting, "all the ...", same-as-a-region) that ended while an
  object left scored >= ``--left``, and the LM's probability of going on there.

By default the gates this probe is about are off (``sure_gate`` 0, ``region_sure_gate`` None,
``list_sure`` 0: what the model does without them); ``--as-saved`` keeps the model's own settings.

    python bench/gate_probe.py tiny --count 200 --out bench/results/gates/gate_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def recording_decoders(records: list):
    """Make every PointerDecoder the pipeline builds record into ``records`` (one dict per answer);
    returns the function that undoes it."""
    from perception import decoding

    class Recording(decoding.PointerDecoder):
        def see_prompt(self, input_ids, hidden, region_embeds=None):
            super().see_prompt(input_ids, hidden, region_embeds)
            valid = self.state.objects.valid[int(self._bidx)]
            self.record = {"match": [] if self._match is None else [float(m) for m in self._match[valid]],
                           "p_ground": None, "after_loc": [], "decoder": self}  # the decoder: for probes that read its proposals
            records.append(self.record)

        def banned_next(self, answer, logits):
            if not answer:
                self.record["p_ground"] = decoding._share(logits, self._grounding())
            elif answer[-1] == self.model.prompts.loc_id and self._match is not None:
                left = self._open()
                best = float(self._match[left].max()) if bool(left.any()) else 0.0
                self.record["after_loc"].append({"going_on": 1.0 - decoding._share(logits, self._list_ends), "best_left": best})
            return super().banned_next(answer, logits)

    original = decoding.answer_decoder

    def answer_decoder(model, state, frame, bidx=0, max_objects=None):
        d = original(model, state, frame, bidx, max_objects)
        if type(d) is decoding.PointerDecoder:
            d.__class__ = Recording
        return d

    decoding.answer_decoder = answer_decoder
    return lambda: setattr(decoding, "answer_decoder", original)


def collect(pipe, seed: int, count: int) -> list:
    """One row per chat turn: task, kind ("target" | "none" | "other"), grounded objects, record."""
    from perception.evaluate import NO_TARGET_TASKS, shapesref_items

    records, rows = [], []
    restore = recording_decoders(records)

    def ask(gt, turn, history=None):
        n = len(records)
        answer = pipe.chat(gt["image"], turn.user, history=history, regions=turn.regions)
        kind = ("none" if turn.task in NO_TARGET_TASKS or turn.task == "same_as_region" and not turn.targets
                else "target" if turn.targets else "other")
        record = records[n] if len(records) > n else {"match": [], "p_ground": None, "after_loc": []}
        record.pop("decoder", None)  # rows outlive the turn: they keep no image state
        rows.append({"task": turn.task, "kind": kind, "grounded": len(answer.objects), "targets": len(turn.targets or []), **record})
        return answer

    try:
        for _, gt, item in shapesref_items(seed, count, count):
            if isinstance(item, dict):  # a click: no answer
                continue
            if isinstance(item, list):
                history = None
                for turn in item:
                    history = ask(gt, turn, history).history
            else:
                ask(gt, item)
    finally:
        restore()
    return rows


def summarise(rows: list, gate: float, sure: float, left: float) -> dict:
    q = lambda xs: [round(float(v), 3) for v in np.quantile(xs, [0.1, 0.5, 0.9])] if len(xs) else []
    missed = [r for r in rows if r["kind"] == "target" and r["grounded"] == 0]
    lm_sure = [r for r in missed if (r["p_ground"] or 0) >= sure and max(r["match"], default=0) < gate]
    none = [r for r in rows if r["kind"] == "none" and r["grounded"] == 0]
    listings = [r for r in rows if r["task"] in ("count", "ground_all", "same_as_region") and r["grounded"] > 0]
    stopped = [r for r in listings if r["after_loc"] and r["after_loc"][-1]["best_left"] >= left]
    by_task = {}
    for r in missed:
        by_task[r["task"]] = by_task.get(r["task"], 0) + 1
    return {
        "turns": len(rows),
        "target_none": {"n": len(missed), "of_turns_with_a_target": sum(r["kind"] == "target" for r in rows), "by_task": by_task,
                        "lm_sure_all_scores_under_gate": len(lm_sure),
                        "lm_sure_tasks": sorted({r["task"] for r in lm_sure}),
                        "their_p_ground_q10_50_90": q([r["p_ground"] for r in lm_sure]),
                        "their_best_match_q10_50_90": q([max(r["match"], default=0) for r in lm_sure])},
        "no_target": {"n": len(none), "p_ground_q10_50_90": q([r["p_ground"] or 0 for r in none]),
                      "p_ground_at_least_sure": sum((r["p_ground"] or 0) >= sure for r in none)},
        "stopped_listings": {"n_listings": len(listings), "ended_with_an_object_left_over": len(stopped),
                             "going_on_q10_50_90": q([r["after_loc"][-1]["going_on"] for r in stopped]),
                             "best_left_q10_50_90": q([r["after_loc"][-1]["best_left"] for r in stopped])},
        "settings": {"match_gate": gate, "sure": sure, "left": left},
    }


def main(argv=None) -> int:
    import perception

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="an object-token checkpoint folder, or a preset name")
    ap.add_argument("--seed", type=int, default=12_000_000)
    ap.add_argument("--count", type=int, default=200, help="validation scenes")
    ap.add_argument("--sure", type=float, default=0.9, help="the LM probability called sure")
    ap.add_argument("--left", type=float, default=0.95, help="the match score of an object left called sure")
    ap.add_argument("--as-saved", action="store_true", help="keep the model's sure_gate and list_sure (default: off)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON report path")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = perception.load_pipeline(args.model, device="cpu")
    if getattr(pipe.model, "object_tokens", None) is None or pipe.model.object_tokens.match is None:
        print("error: the model has no object tokens with match scores", file=sys.stderr)
        return 2
    oc = pipe.model.config.objects
    if not args.as_saved:
        oc.sure_gate, oc.region_sure_gate, oc.list_sure = 0.0, None, 0.0
    rep = summarise(collect(pipe, args.seed, args.count), oc.match_gate, args.sure, args.left)
    rep = {"model": args.model, "seed": args.seed, "count": args.count, "sure_gate": oc.sure_gate, "region_sure_gate": oc.region_sure_gate, "list_sure": oc.list_sure, **rep}
    print(json.dumps(rep, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
