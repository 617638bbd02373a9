#!/usr/bin/env python3
"""Groups a profile of the `pulse` server's hot path (bench/profile.sh).

    profile_groups.py callgrind CALLGRIND_OUT REQUESTS [TOP]
    profile_groups.py perf PERF_REPORT_CHILDREN_TXT 0 [TOP]
    profile_groups.py callees CALLGRIND_OUT REQUESTS REGEX   (exploring)

callgrind: the raw callgrind file is read directly, and costs are keyed by
function *symbol*, whatever source file a line was inlined from (the
"file:function" split of callgrind_annotate scatters one function over
many rows). Inclusive cost of F = its own instructions + the cost of its
calls to other functions. That is exact for functions that are not on a
recursive cycle; async poll chains are, so the figures of the big
`{{closure}}` wrappers (the request, the connection) are flagged and not
used for the groups.

perf: `perf report --children --sort symbol` lines; a sample counts once
for each symbol on its stack, so recursion is no problem there.

The groups are rows of disjoint parts of a cached `metrics` request (see
ROWS); what no row claims is "other". Row patterns are regular
expressions on the symbol; a row's value is the largest inclusive cost
among the symbols its patterns match, summed over its patterns.
"""

import re
import sys
from collections import defaultdict

# (group, row, [terms]). A term is a regular expression on the symbol
# (the largest inclusive cost among the symbols it matches), "-regex" (the
# same, subtracted), or "caller -> callee" (callgrind: the cost of the calls
# between them; perf: the callee's inclusive share). Rows are chosen not to
# nest in one another: checked against the call tree of a cached `metrics`
# request (`callees` mode), where the metric query runs in a task of its
# own and the answer's fields are resolved on the connection's task.
HANDLER = r"^<F as axum::handler::Handler<\(M,T1,T2,T3\),S>>::call::\{\{closure\}\}$"
CALLER = r"^pulse::http::graphql::caller::\{\{closure\}\}$"
ROWS = [
    ("JWT verification", "jsonwebtoken decode: HMAC-SHA256, base64, claims JSON",
     [r"^jsonwebtoken::decoding::decode$"]),
    ("auth lookups", "tenant and user rows (the rest of `caller`; cached for a second where the server does)",
     [CALLER, r"-^jsonwebtoken::decoding::decode$"]),
    ("rate limits", "per-tenant and per-user rate limits (`limits::admit`)",
     [r"^pulse::domain::limits::admit::\{\{closure\}\}$"]),
    ("GraphQL parse/validate", "request body JSON to an async-graphql Request (serde)",
     [HANDLER + r" -> ^serde_json::de::from_slice$"]),
    ("GraphQL parse/validate", "parse the document (pest), once per request",
     [r"^async_graphql_parser::parse::executable::parse_query$"]),
    ("GraphQL parse/validate", "validate (rules, complexity, depth)",
     [r"^async_graphql::validation::check_rules$"]),
    ("cache key/lookup", "hot cache, whole `cached::aggregate` (split below)",
     [r"^pulse::domain::metrics::cached::aggregate::\{\{closure\}\}$"]),
    ("cache key/lookup", "Redis replies parsed on the Redis connection's task",
     [r"^redis::aio::multiplexed_connection::PipelineSink<T>::poll_read$"]),
    ("serialization", "answer fields resolved into async-graphql values (series, points; per-field futures and extension hooks)",
     [r"^<pulse::graphql::metrics::MetricResult as async_graphql::base::OutputType>::resolve::\{\{closure\}\}$"]),
    ("serialization", "Response to JSON bytes (`into_http`: to_value, then to_vec)",
     [r"^pulse::http::graphql::into_http$"]),
    ("other", "GraphQL execution around the answer: field dispatch, extension hooks",
     [r"^async_graphql::schema::Schema<Query,Mutation,Subscription>::execute_once::\{\{closure\}\}$",
      r"-^<pulse::graphql::metrics::MetricResult as async_graphql::base::OutputType>::resolve::\{\{closure\}\}$"]),
    ("other", "the metric query's task outside the cache: plan, tenant query gate",
     [r"^pulse::graphql::metrics::analytic::\{\{closure\}\}::\{\{closure\}\}$",
      r"-^pulse::domain::metrics::cached::aggregate::\{\{closure\}\}$"]),
]

# Split of the hot cache's own work: its direct callees, by pattern.
CACHE_FN = r"^pulse::domain::metrics::cached::aggregate::\{\{closure\}\}$"
CACHE_SPLIT = [
    ("Vec collects: entry keys (stamp + format!), local-tier gets, mark lists",
     r"^<alloc::vec::Vec<T> as alloc::vec::spec_from_iter::SpecFromIter<T,I>>::from_iter$"),
    ("cached entries decoded (serde_json, one per bucket)", r"^serde_json::de::(from_str|from_trait|from_slice)$"),
    ("cells combined into the answer", r"^pulse::domain::metrics::cells::combine$"),
    ("counter field names (Mark::field, format!)", r"^pulse::cache::Mark::field$"),
    ("slots (buckets and their marks)", r"^pulse::domain::metrics::cached::slots$"),
    ("HashMap/BTreeSet building and hashing",
     r"(HashMap<K,V,S> as core::iter::traits::collect::FromIterator|BTreeSet<T> as core::iter::traits::collect::FromIterator|hashbrown::map::HashMap<K,V,S,A>::insert|hash_one|RawTable<T,A> as core::ops::drop::Drop)"),
    ("digest of the question (SHA-256)", r"^pulse::domain::metrics::cached::digest$"),
    ("Redis command: encode, send, timeout", r"(redis::|tokio::time::timeout::Timeout)"),
    ("allocation", r"^(__rustc::__rust_(alloc|dealloc|realloc)|malloc|free|realloc)$"),
]


def parse_callgrind(path):
    names, files = {}, {}
    self_cost = defaultdict(int)
    calls = defaultdict(int)
    call_counts = defaultdict(int)
    fn = None
    cfn = None
    pending = False
    total = 0
    name_re = re.compile(r"^\((\d+)\)(?: (.*))?$")

    def resolve(table, raw):
        m = name_re.match(raw)
        if not m:
            return raw
        key, name = m.group(1), m.group(2)
        if name is not None:
            table[key] = name
        return table.get(key, raw)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                cost = int(line.split()[-1]) if len(line.split()) > 1 else 0
                if pending:
                    calls[(fn, cfn)] += cost
                    pending = False
                else:
                    self_cost[fn] += cost
                    total += cost
                continue
            key, _, value = line.partition("=")
            if key == "fn":
                fn = resolve(names, value)
            elif key == "cfn":
                cfn = resolve(names, value)
            elif key in ("fl", "fi", "fe", "cfi", "cfl"):
                resolve(files, value)
            elif key == "calls":
                pending = True
                call_counts[(fn, cfn)] += int(value.split()[0])
    inclusive = defaultdict(int)
    for f_, cost in self_cost.items():
        inclusive[f_] += cost
    for (caller, callee), cost in calls.items():
        if caller != callee:
            inclusive[caller] += cost
    return total, self_cost, inclusive, calls, call_counts


def parse_perf(path):
    """`perf report --children` lines: children%, self%, [.] or [k], symbol.
    Also the kernel's share (self time of [k] symbols) and the share of
    samples whose stack could not be unwound to its root (the frame
    0xffffffffffffffff): outer async frames are undercounted by that much."""
    inclusive = {}
    kernel = 0.0
    truncated = 0.0
    line_re = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+\[([.k])\]\s+(.*?)\s*$")
    with open(path, errors="replace") as f:
        for line in f:
            m = line_re.match(line)
            if m:
                children, own, space = float(m.group(1)), float(m.group(2)), m.group(3)
                # Trailing columns (e.g. "-  -") follow the symbol after a wide gap.
                sym = re.split(r"\s{2,}", m.group(4))[0]
                inclusive[sym] = max(inclusive.get(sym, 0.0), children)
                if space == "k":
                    kernel += own
                if sym == "0xffffffffffffffff":
                    truncated = children
    return 100.0, inclusive, kernel, truncated


def best(inclusive, pattern, limit):
    r = re.compile(pattern)
    found = [(v, k) for k, v in inclusive.items() if r.search(k) and v <= limit]
    return max(found) if found else (0, None)


def term(term_, inclusive, calls, limit):
    """The value of one ROWS term (see ROWS)."""
    if " -> " in term_:
        caller, callee = (re.compile(t) for t in term_.split(" -> "))
        if calls is None:
            return best(inclusive, callee.pattern, limit)[0]
        return sum(v for (a, b), v in calls.items()
                   if a != b and caller.search(a) and callee.search(b))
    if term_.startswith("-"):
        return -best(inclusive, term_[1:], limit)[0]
    return best(inclusive, term_, limit)[0]


def main():
    kind, path, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 and kind != "callees" else 40
    calls = None
    if kind == "perf":
        total, inclusive, kernel, truncated = parse_perf(path)
        print(f"perf: kernel (self) {kernel:.1f} % of the server's samples; stacks not unwound to "
              f"their root: {truncated:.1f} % (outer frames are undercounted by up to that)")
        unit = "% of server samples"
        per = lambda v: f"{v:.1f} %"
    else:
        total, self_cost, inclusive, calls, counts = parse_callgrind(path)
        unit = "instructions"
        per = lambda v: f"{v / max(requests, 1):,.0f}"
    share = lambda v: f"{100.0 * v / total:.1f} %"

    if kind == "callees":
        pattern = re.compile(sys.argv[4])
        for f_ in sorted(inclusive, key=inclusive.get, reverse=True):
            if not pattern.search(f_):
                continue
            print(f"{per(inclusive[f_]):>12} {share(inclusive[f_]):>8}  {f_}  (self {per(self_cost[f_])})")
            out = sorted(((v, g) for (c, g), v in calls.items() if c == f_ and g != f_), reverse=True)
            for v, g in out[:25]:
                print(f"{'':>12} {per(v):>12} {share(v):>8}  -> {g[:170]} ({counts[(f_, g)]}x)")
        return

    print(f"\nTotal: {total:,.0f} {unit}" + (f", {total / requests:,.0f} per request" if requests else ""))
    print(f"\n| group | part | {'per request' if requests else 'inclusive'} | share |")
    print("|---|---|---:|---:|")
    claimed = 0
    groups = defaultdict(float)
    for group, row, patterns in ROWS:
        value = max(sum(term(t, inclusive, calls, total) for t in patterns), 0)
        claimed += value
        groups[group] += value
        print(f"| {group} | {row} | {per(value)} | {share(value)} |")
    other = max(total - claimed, 0)
    print(f"| other | the rest: HTTP/1 server, routing, middleware, tokio, Redis and sqlx I/O, logging, ... | {per(other)} | {share(other)} |")
    groups["other"] += other
    print("\nBy group:")
    for group in dict.fromkeys([g for g, _, _ in ROWS] + ["other"]):
        print(f"  {group:<24} {per(groups[group]):>12}  {share(groups[group]):>7}")

    if kind == "callgrind":
        cache_total, cache_fn = best(inclusive, CACHE_FN, total)
        if cache_fn:
            print(f"\nInside the hot cache ({per(cache_total)} per request), its direct callees:")
            rest = cache_total - self_cost[cache_fn]
            for label, pattern in CACHE_SPLIT:
                r = re.compile(pattern)
                v = sum(c for (a, b), c in calls.items() if a == cache_fn and b != a and r.search(b))
                rest -= v
                print(f"  {label:<58} {per(v):>10}  {share(v):>7}")
            print(f"  {'its own code (inlined: loops, Vec, HashMap, futures)':<58} {per(self_cost[cache_fn]):>10}  {share(self_cost[cache_fn]):>7}")
            print(f"  {'other callees':<58} {per(rest):>10}  {share(rest):>7}")

    print(f"\nTop {top} by inclusive cost (callgrind's recursion copies, `'2` etc., left out):")
    shown = 0
    for f_ in sorted(inclusive, key=inclusive.get, reverse=True):
        if inclusive[f_] > total or re.search(r"'\d+$", f_):
            continue
        print(f"  {per(inclusive[f_]):>12} {share(inclusive[f_]):>8}  {f_[:160]}")
        shown += 1
        if shown >= top:
            break


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        pass
