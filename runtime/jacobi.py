"""Speculative Jacobi decoding of one image's codes (Teng et al., arXiv 2410.01699), training-free.

Each iteration feeds the newest accepted code and a window of draft codes through the decoder
stream and the adapter's cursor in one call each (batch 2 with CFG), so the visual head gives
the model's distribution after every fed code at once. Drafts are verified left to right by
the speculative-sampling rule: draft x, drawn from q, is accepted with probability
min(1, p(x) / q(x)); the first rejected one is replaced by a draw from max(0, p - q)
(normalised), and when every draft passes one more code is drawn from the last distribution.
Each accepted code is therefore distributed exactly as sequential sampling would draw it (p is
the sampler's own distribution: CFG, temperature, top-k and top-p applied); greedy decoding
accepts a draft only when it is the argmax, so it gives the sequential codes. The stream and
the cursor are then truncated to the accepted length.

The codes after a rejection are the next iteration's drafts, drawn from the distributions this
call computed for them (their q); the window is topped up by an initialisation rule with a
known q: `above` (the code one grid row up, a point mass: images repeat vertically), `repeat`
(the newest code, a point mass) or `random` (uniform over the codes, the paper's choice).

It knows the acceptance rule, windows and the grid; it drives the stream and the cursor only
through their operations (append, truncate) and knows nothing about engines.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)



def jacobi_image(model, stream, switch, sampler, cfg_scale, index, timer, window: int = 8, init: str = "above"):
    """Decode one image after `<imgbos>` (the contract of generation's `_sequential_image`):
    yields `ImageProgress` as codes are accepted and returns (stream, complete), the stream
    holding every code but the last when the grid is full, every code when the image ended."""
    from runtime.generation import JACOBI_INITS, ImageProgress, guided_logits

    if init not in JACOBI_INITS:
        raise ValueError(f"init must be one of {', '.join(JACOBI_INITS)}, got {init!r}")
    space, grid_w = model.space, model.grid[1]
    n_grid, n_codes = model.grid[0] * grid_w, space.n_codes
    end = n_codes  # <imgend>'s index in the visual head; <imgpad> (n_codes + 1) is masked out

    def dist(logits):  # [B, C] -> the sampler's distribution after CFG [C]
        return sampler.probabilities(guided_logits(logits, cfg_scale, n_codes))

    def finish(complete):
        timer["image_calls"] = timer.get("image_calls", 0) + cursor.calls
        timer["jacobi_accepted"] = timer.get("jacobi_accepted", 0) + accepted
        if not complete:
            log.warning("the image ended after %d of %d codes; missing codes set to 0", len(codes), n_grid)
        return stream, complete

    cursor = model.start_image(stream)
    codes: list[int] = []  # accepted code indices
    drafts: list[tuple[int, np.ndarray | None]] = []  # (index, q); q None = a point mass on the index
    accepted = 0  # drafts accepted (the codes a sequential decoder would have needed a call for)
    newest = sampler.draw(dist(cursor.prefill()))  # accepted, not fed yet
    while True:
        if newest == end:
            switch.step(space.img_end)
            return finish(False)
        codes.append(newest)
        switch.step(space.image_index_to_id(newest))
        yield ImageProgress(index, len(codes), n_grid)
        if len(codes) == n_grid:
            return finish(True)
        # the window: up to window - 1 drafts, never past the grid, nothing after a drafted <imgend>
        drafts = drafts[: min(window - 1, n_grid - len(codes))]
        while len(drafts) < min(window - 1, n_grid - len(codes)):
            drafts.append(_initial(init, codes + [d for d, _ in drafts], grid_w, n_codes, sampler))
        drafts = drafts[: next((j + 1 for j, (d, _) in enumerate(drafts) if d == end), len(drafts))]
        fed = [newest] + [d for d, _ in drafts]
        base, segment = stream.length, cursor.segment
        logits = cursor.append(stream.append([space.image_index_to_id(i) for i in fed]))  # [B, len(fed), C]

        # logits[:, j] is the distribution of the code after fed[j]: that of drafts[j]
        k, newest = 0, None
        for j, (x, q) in enumerate(drafts):
            p = dist(logits[:, j])
            if sampler.greedy:
                ok = p[x] == 1.0
            else:
                ok = sampler.uniform() < min(1.0, p[x] / (1.0 if q is None else q[x]))
            if not ok:
                residual = p.copy()
                if q is None:
                    residual[x] = 0.0
                else:
                    residual = np.maximum(p - q, 0.0)
                newest = sampler.draw(residual if residual.sum() > 0 else p)
                break
            k += 1
        accepted += k
        for j in range(k):
            x = drafts[j][0]
            if x == end:  # the stream keeps the fed code and the drafts before this one
                switch.step(space.img_end)
                stream.truncate(base + 1 + j)
                return finish(False)
            codes.append(x)
            switch.step(space.image_index_to_id(x))
            yield ImageProgress(index, len(codes), n_grid)
            if len(codes) == n_grid:  # the last code is not kept (it goes in with <imgend>)
                stream.truncate(base + 1 + j)
                return finish(True)
        stream.truncate(base + 1 + k)
        cursor.truncate(segment + 1 + k)
        if newest is None:  # every draft passed: one more code from the last distribution
            newest, drafts = sampler.draw(dist(logits[:, k])), []
        else:  # the rejected tail's positions: drafts drawn from what this call computed for them
            drafts = []
            for j in range(k + 1, len(fed)):
                q = dist(logits[:, j])
                drafts.append((sampler.draw(q), q))


def _initial(init, seq, grid_w, n_codes, sampler) -> tuple[int, np.ndarray | None]:
    """A draft for the position after `seq` (accepted codes, then drafts) and its q."""
    if init == "random":
        q = np.zeros(n_codes + 2)
        q[:n_codes] = 1.0 / n_codes
        return int(sampler.rng.integers(n_codes)), q
    if init == "above" and len(seq) >= grid_w:
        return seq[-grid_w], None
    return seq[-1], None
