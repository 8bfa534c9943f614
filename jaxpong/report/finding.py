"""The late-sender report in words: the plain-language finding (persistent late senders, slow collectors,
the update's share across hosts, a slow link, the useful rank count of the critical batch), the per-rank
table and the machine-readable summary."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from jaxpong.base.config import Config
from jaxpong.base.errors import ConfigError
from jaxpong.learn import batch_rule
from jaxpong.report.stats import RankStats

TEXT_NAME = "imbalance.txt"
TABLE_MAX_RANKS = 32  # the printed table (and the JSON's "ranks") lists every rank up to this many
TABLE_TOP = 10  # above it: the ranks most often last (imbalance.txt always holds every rank)
NAMED_MAX = 5  # late senders named in the finding; the rest are counted


def _pct(x: float) -> str:
    return f"{100 * x:.1g}%" if 0 < x < 0.01 else f"{100 * x:.0f}%"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def late_senders(stats: list[RankStats]) -> list[RankStats]:
    """The persistent late senders, most often last first.

    A rank is one when it arrived last in more rounds than chance allows and it waits clearly less
    than the others: last in at least 3 rounds and in at least min(half the rounds, the even share
    plus 3 standard deviations of a binomial count); and its wait fraction either 5 points or more
    below the median of the ranks that are not candidates, or at most half of that median where the
    median is 1% or more (runs whose rounds are mostly update, such as many ranks oversubscribed on
    few cores). At 2 ranks that is "last in half the rounds or more"; at 1,536 ranks and 300 rounds,
    last in 3 rounds or more (chance gives 0.2 on average)."""
    if len(stats) < 2:
        return []
    rounds = max(s.rounds for s in stats)
    p = 1.0 / len(stats)
    need = max(3.0, min(0.5 * rounds, rounds * p + 3.0 * math.sqrt(rounds * p * (1.0 - p))))
    candidates = [s for s in stats if s.last_arrivals >= need]
    others = [s.wait_fraction for s in stats if s.last_arrivals < need]
    if not candidates or not others:
        return []
    typical = float(np.median(others))
    late = [
        s
        for s in candidates
        if typical - s.wait_fraction >= 0.05 or (typical >= 0.01 and s.wait_fraction <= 0.5 * typical)
    ]
    return sorted(late, key=lambda s: (-s.last_arrivals, s.wait_fraction, s.rank))


SLOW_COLLECTOR = 2 / 3  # a rank collecting below this share of the median rank's samples per second


def slow_collectors(stats: list[RankStats]) -> list[RankStats]:
    """Ranks that play their games slowly: fewer than SLOW_COLLECTOR of the median rank's samples per
    second of collection, slowest first. Without a deadline they are the late senders; under one, the
    deadline cuts them and they arrive on time with fewer samples, so only this names them."""
    speeds = [s.collect_speed for s in stats if s.collect_speed > 0]
    if len(stats) < 2 or len(speeds) < 2:
        return []
    typical = float(np.median(speeds))
    return sorted(
        (s for s in stats if 0 < s.collect_speed < SLOW_COLLECTOR * typical), key=lambda s: (s.collect_speed, s.rank)
    )


def _slow_text(slow: list[RankStats], stats: list[RankStats]) -> str:
    """The sentence on slow collectors that are not late senders: the deadline holds them."""
    slow_ranks = {s.rank for s in slow}
    others = [s for s in stats if s.rank not in slow_ranks]
    if not others:
        return ""
    one = len(slow) == 1
    named = slow[:NAMED_MAX]
    more = f" and {len(slow) - len(named)} more (in {TEXT_NAME})" if len(slow) > len(named) else ""
    speed = float(np.mean([s.collect_speed for s in slow])) / float(np.median([s.collect_speed for s in others]))
    text = (
        f" {'Rank' if one else 'Ranks'} {_and([str(s.rank) for s in named])}{more} "
        f"{'plays' if one else 'play'} slowly: {speed:.2f}x the others' samples per second of collection"
    )
    cut = sum(s.cut_rounds for s in slow) / max(sum(s.rounds for s in slow), 1)
    others_valid = float(np.mean([s.valid_samples / max(s.rounds, 1) for s in others]))
    if cut >= 0.5 and others_valid > 0:
        valid = float(np.mean([s.valid_samples / max(s.rounds, 1) for s in slow]))
        text += (
            f"; the deadline cut {'its' if one else 'their'} collection in {_pct(cut)} of rounds, so "
            f"{'it' if one else 'they'} arrived on time with {_pct(valid / others_valid)} of the others' samples"
        )
    return text + "."


def finding(stats: list[RankStats], update_share: bool = True) -> str:
    """A short plain-language reading of the per-rank numbers: who is late, and what it costs the others.
    update_share False leaves out the update's share across hosts (link_text gives it with the links)."""
    if not stats:
        return "no rounds to report."
    rounds = max(s.rounds for s in stats)
    valid = sum(s.valid_samples for s in stats)
    masked = sum(s.masked_samples for s in stats)
    masked_txt = (
        f" {_pct(masked / (valid + masked))} of the samples were masked (played, but no gradient weight)."
        if masked
        else ""
    )
    update_txt = update_text(stats) if update_share else ""
    if len(stats) == 1:
        s = stats[0]
        busy = s.collect_s + s.compute_s + s.wait_s
        return (
            f"one rank: nobody to wait for; per round it spent {_pct(s.collect_s / busy)} of its time collecting "
            f"and {_pct(s.compute_s / busy)} in the update.{masked_txt}"
        )
    late = late_senders(stats)
    late_ranks = {s.rank for s in late}
    slow = [s for s in slow_collectors(stats) if s.rank not in late_ranks]
    slow_txt = _slow_text(slow, stats) if slow else ""
    if not late:
        top = max(stats, key=lambda s: (s.last_arrivals, -s.wait_fraction))
        mean_wait = float(np.mean([s.wait_fraction for s in stats]))
        return (
            f"no persistent late sender: the last arrival moves between ranks (most often rank {top.rank}, in "
            f"{_pct(top.last_arrivals / max(rounds, 1))} of {rounds} rounds); the ranks lost on average "
            f"{_pct(mean_wait)} of their time waiting.{update_txt}{slow_txt}{masked_txt}"
        )
    others = [s for s in stats if s.rank not in late_ranks]
    one = len(late) == 1
    named = late[:NAMED_MAX]
    shares = [_pct(s.last_arrivals / max(rounds, 1)) for s in named]
    if one:
        text = f"rank {named[0].rank} is the late sender: it arrived last in {shares[0]} of {rounds} rounds"
    else:
        together = sum(s.last_arrivals for s in late) / max(rounds, 1)
        more = f" and {len(late) - len(named)} more (in {TEXT_NAME})" if len(late) > len(named) else ""
        text = (
            f"ranks {_and([str(s.rank) for s in named])}{more} are the persistent late senders: together they "
            f"arrived last in {_pct(together)} of {rounds} rounds "
            f"({', '.join(f'rank {s.rank} in {share}' for s, share in zip(named, shares))})"
        )
    late_collect = float(np.mean([s.collect_s for s in late]))
    others_collect = float(np.mean([s.collect_s for s in others]))
    ratio = late_collect / others_collect if others_collect > 0 else math.inf
    if ratio >= 1.2:
        text += (
            f", {'its' if one else 'their'} collection took {ratio:.1f}x as long as the others' "
            f"({late_collect:.3g} s against {others_collect:.3g} s per round)"
        )
    others_wait = float(np.mean([s.wait_fraction for s in others]))
    others_wait_s = float(np.mean([s.wait_s for s in others]))
    late_wait = float(np.mean([s.wait_fraction for s in late]))
    who = "the other rank lost" if len(others) == 1 else f"the other {len(others)} ranks lost on average"
    whom = f"rank {named[0].rank} itself" if one else "the late senders"
    text += (
        f"; {who} {_pct(others_wait)} of {'its' if len(others) == 1 else 'their'} time waiting for "
        f"{'it' if one else 'them'} ({others_wait_s:.3g} s per round), against {_pct(late_wait)} for {whom}."
    )
    late_rounds = sum(s.rounds for s in late)
    if sum(s.cut_rounds for s in late) >= 0.5 * late_rounds:
        others_valid = float(np.mean([s.valid_samples for s in others]))
        if others_valid > 0:
            text += (
                f" The deadline cut {'its' if one else 'their'} collection in "
                f"{_pct(sum(s.cut_rounds for s in late) / late_rounds)} of rounds, so "
                f"{'it' if one else 'they'} joined with "
                f"{_pct(float(np.mean([s.valid_samples for s in late])) / others_valid)} of the others' samples."
            )
    elif ratio < 1.2 and one and named[0].rank == 0:
        text += (
            " Its collection is not slower: rank 0's own host work between rounds"
            " (logging, checkpoints, evaluations) delays it."
        )
    return text + host_text(late, stats) + update_txt + slow_txt + masked_txt


UPDATE_SHARE_NOTED = 0.3  # across hosts, an update that takes more of a round than this is named


def update_text(stats: list[RankStats]) -> str:
    """Across hosts: how much of a round the update took, with its allreduces. A slow link between hosts
    slows every rank's allreduces alike, so it shows here, not as a late sender, and deadline masking
    (which cuts collection) cannot shorten it."""
    if len({s.host for s in stats if s.host}) < 2:
        return ""
    busy = [s.collect_s + s.compute_s + s.wait_s for s in stats]
    share = float(np.mean([s.compute_s / b for s, b in zip(stats, busy) if b > 0])) if any(busy) else 0.0
    if share < UPDATE_SHARE_NOTED:
        return ""
    update_s = float(np.mean([s.compute_s for s in stats]))
    return (
        f" The update, with its allreduces across hosts, took {_pct(share)} of each round ({update_s:.3g} s) on"
        " every rank alike: a slow link between hosts shows here, and the deadline cannot shorten it (it cuts"
        " collection only)."
    )


def rate_text(mb_s: float) -> str:
    """A link's rate in MB/s: whole numbers from 10 up, two significant digits below (1.4, not 1)."""
    return f"{mb_s:,.0f} MB/s" if mb_s >= 10 else f"{mb_s:.2g} MB/s"


def links_carry_cost(record: dict | None) -> bool:
    """Whether link_text will give the update's cost over the links (so finding need not give its share)."""
    return bool(record and record.get("links") and record.get("allreduce_bytes") and record.get("allreduces_per_round"))


SLOW_LINK_RATIO = 4.0  # a host whose link from rank 0's host is this many times slower than another's is named


def link_text(record: dict | None, stats: list[RankStats]) -> str:
    """Across hosts: the links rank 0 measured at start (links.jsonl), the host whose link is much the
    slowest, and what the update's allreduces cost at that rate against the round. A slow link slows every
    rank's allreduces alike, so it never shows as a late rank: this is where it is named."""
    if not record or not record.get("links") or not stats:
        return ""
    links = sorted(record["links"], key=lambda k: k["mb_s"])
    hosts = record.get("hosts") or []
    home = hosts[0] if hosts else "rank 0's host"

    def ranks_of(host: str) -> str:
        mine = [str(r) for r, h in enumerate(hosts) if h == host]
        return f"rank{'s' if len(mine) > 1 else ''} {_and(mine)}" if mine else "its ranks"

    rates = ", ".join(f"{k['host']} {rate_text(k['mb_s'])}" for k in links)
    text = f" Links from rank 0's host {home}, measured at start (links.jsonl): {rates}."
    slowest = links[0]
    if len(links) > 1 and links[1]["mb_s"] >= SLOW_LINK_RATIO * slowest["mb_s"]:
        text += (
            f" Host {slowest['host']}'s link is the slow one ({links[1]['mb_s'] / max(slowest['mb_s'], 1e-9):.0f}x "
            f"slower than the next): {ranks_of(slowest['host'])} there slow every rank's allreduces alike."
        )
    elif len(links) > 1 and all(k["mb_s"] < SLOW_LINK_RATIO * slowest["mb_s"] for k in links):
        text += f" All of them alike: if they are slow, it is {home}'s own link or the network between."
    per_round = record.get("allreduce_bytes", 0) * record.get("allreduces_per_round", 0)
    if per_round > 0:
        # The probe's short transfers rank the links; they do not size them (a rate-shaped link reads several
        # times below its sustained rate), so the cost is the update's own time.
        round_s = float(np.mean([s.collect_s + s.compute_s + s.wait_s for s in stats]))
        update_s = float(np.mean([s.compute_s for s in stats]))
        share = update_s / round_s if round_s > 0 else 0.0
        text += (
            f" The update's {record['allreduces_per_round']} allreduces carry about {per_round / 1e6:.3g} MB a round "
            f"over each link; the update took {update_s:.3g} s, {_pct(share)} of the mean round ({round_s:.3g} s)"
        )
        text += (
            " on every rank alike: fewer, larger optimizer steps or a faster link would shorten it; the deadline"
            " cannot (it cuts collection only)."
            if share >= UPDATE_SHARE_NOTED
            else "."
        )
    return text


def host_text(late: list[RankStats], stats: list[RankStats]) -> str:
    """Where the late senders ran, when the ranks ran on more than one host: a late host shows as a host."""
    hosts = {s.rank: s.host for s in stats if s.host}
    if len(set(hosts.values())) < 2 or not late:
        return ""
    late_ranks = {s.rank for s in late}
    parts = []
    for host in sorted({hosts[s.rank] for s in late if s.rank in hosts}):
        on_host = sorted(r for r, h in hosts.items() if h == host)
        mine = [r for r in on_host if r in late_ranks]
        whole = " (all of its ranks)" if len(mine) == len(on_host) else f" ({len(mine)} of its {len(on_host)} ranks)"
        parts.append(f"host {host}: rank{'s' if len(mine) > 1 else ''} {_and([str(r) for r in mine])}{whole}")
    return f" By host: {'; '.join(parts)}."


def useful_ranks_line(noise_scale: float, samples_per_step: float, ranks: int, cfg: Config) -> str | None:
    """The one plain line on how many ranks the critical batch makes useful, from the run's
    charts/noise_scale (B_simple, which approximates the critical batch), charts/optimizer_batch (valid
    samples per optimizer step, all ranks), rank count and user config (whose rules say how the optimizer
    batch follows the rank count); None when the noise scale was not measured."""
    if not (noise_scale > 0 and samples_per_step > 0):
        return None
    useful = batch_rule.useful_ranks(cfg, ranks, samples_per_step, noise_scale)
    head = (
        f"critical batch about {noise_scale:,.0f} samples per optimizer step (gradient noise scale); "
        f"this run's steps averaged {samples_per_step:,.0f}"
    )
    if useful < 1:
        return f"{head}, already past it: more ranks would add samples that buy little (this run: {ranks})."
    most = "at least " if useful == batch_rule.MOST_RANKS else "about "
    return (
        f"{head}: up to {most}{useful:,} rank{'s' if useful > 1 else ''} keep{'' if useful > 1 else 's'} "
        f"{'their' if useful > 1 else 'its'} optimizer steps within it under this config's batch rules "
        f"(this run: {ranks})."
    )


def noise_scale_line(metrics: list[dict], run_dir: Path) -> str | None:
    """useful_ranks_line from the last metrics line that measured the noise scale, under the rules of the
    config the run was started with (its config.yaml); None if none did, or the config cannot be read."""
    for line in reversed(metrics):
        if "charts/noise_scale" in line and "charts/optimizer_batch" in line:
            try:
                cfg = Config.from_run(run_dir)
            except ConfigError:  # the per-rank report stands without this one line
                return None
            return useful_ranks_line(
                line["charts/noise_scale"],
                line["charts/optimizer_batch"],
                int(line.get("comm/world_size", 1)),
                cfg,
            )
    return None


def table(stats: list[RankStats], limit: int | None = None) -> str:
    """The per-rank table; with `limit`, only the `limit` ranks most often last (when there are more)."""
    head = (
        f"{'rank':>4}  {'rounds':>6}  {'collect s':>9}  {'compute s':>9}  {'wait s':>8}  {'wait %':>6}  "
        f"{'valid':>9}  {'masked':>8}  {'masked %':>8}  {'last':>5}  {'last %':>6}  {'cut':>5}"
    )
    with_hosts = any(s.host for s in stats)
    if with_hosts:
        head += f"  {'host':<12}"
    shown = stats
    if limit is not None and len(stats) > limit:
        shown = sorted(stats, key=lambda s: (-s.last_arrivals, s.wait_fraction, s.rank))[:limit]
    lines = [head, "-" * len(head)]
    for s in shown:
        lines.append(
            f"{s.rank:>4}  {s.rounds:>6}  {s.collect_s:>9.4f}  {s.compute_s:>9.4f}  {s.wait_s:>8.4f}  "
            f"{100 * s.wait_fraction:>6.1f}  {s.valid_samples:>9,}  {s.masked_samples:>8,}  "
            f"{100 * s.masked_fraction:>8.1f}  {s.last_arrivals:>5}  "
            f"{100 * s.last_arrivals / max(s.rounds, 1):>6.1f}  {s.cut_rounds:>5}"
            + (f"  {s.host:<12}" if with_hosts else "")
        )
    if shown is not stats:
        waits = np.array([s.wait_fraction for s in stats])
        lines.append(
            f"({len(shown)} of {len(stats)} ranks: those most often last; every rank is in {TEXT_NAME}. "
            f"Wait % over all ranks: min {100 * waits.min():.1f}, median {100 * np.median(waits):.1f}, "
            f"max {100 * waits.max():.1f})"
        )
    return "\n".join(lines)


def _stat_json(s: RankStats) -> dict:
    return {
        "rank": s.rank,
        "wait_fraction": round(s.wait_fraction, 4),
        "masked_fraction": round(s.masked_fraction, 4),
        "last_arrivals": s.last_arrivals,
        "rounds": s.rounds,
        "collect_s": round(s.collect_s, 6),
        "compute_s": round(s.compute_s, 6),
        "wait_s": round(s.wait_s, 6),
        "valid_samples": s.valid_samples,
        "masked_samples": s.masked_samples,
        **({"host": s.host} if s.host else {}),
    }


def summary(stats: list[RankStats], text: str) -> dict:
    """The machine-readable result (the last line `report` prints). "ranks" lists every rank up to
    TABLE_MAX_RANKS, above that the TABLE_TOP most often last (RUN_DIR/imbalance.txt lists them all)."""
    listed = (
        stats
        if len(stats) <= TABLE_MAX_RANKS
        else sorted(stats, key=lambda s: (-s.last_arrivals, s.wait_fraction, s.rank))[:TABLE_TOP]
    )
    return {
        "num_ranks": len(stats),
        "ranks": [_stat_json(s) for s in listed],
        "late_senders": [s.rank for s in late_senders(stats)],
        "slow_collectors": [s.rank for s in slow_collectors(stats)],
        "finding": text,
    }
