#!/usr/bin/env python3
"""Self cost per function from a callgrind profile, and who calls a function.

    cgself.py FILE [N] [--per K] [--callers SUBSTRING]...

(callgrind_annotate 3.19 mis-attributes dumps taken with callgrind_control;
this reads the format directly.) --per K divides costs by K (e.g. cycles).
"""
import re
import sys
from collections import defaultdict

args = sys.argv[1:]
path = args.pop(0)
per = 1
callers_of = []
top = 40
while args:
    a = args.pop(0)
    if a == '--per':
        per = int(args.pop(0))
    elif a == '--callers':
        callers_of.append(args.pop(0))
    else:
        top = int(a)

names = {}


def name(kind, v):
    m = re.match(r'\((\d+)\)(?:\s+(.*))?', v)
    if not m:
        return v
    key = (kind, m.group(1))
    if m.group(2):
        names[key] = m.group(2)
    return names.get(key, v)


self_cost = defaultdict(int)
calls_cost = defaultdict(lambda: defaultdict(int))  # callee -> caller -> inclusive
calls_n = defaultdict(lambda: defaultdict(int))
fn = cfn = None
after_calls = False
ncalls = 0
total = 0
for line in open(path, errors='replace'):
    line = line.rstrip('\n')
    if not line:
        continue
    if line.startswith('fn='):
        fn = name('fn', line[3:])
        continue
    if line.startswith(('cfn=', 'cfi=', 'cfl=', 'cob=')):
        if line.startswith('cfn='):
            cfn = name('fn', line[4:])
        else:
            if line.startswith(('cfi=', 'cfl=')):
                name('fl', line[4:])
            else:
                name('ob', line[4:])
        continue
    if line.startswith(('fl=', 'fi=', 'fe=', 'ob=')):
        name('ob' if line.startswith('ob=') else 'fl', line[3:])
        continue
    if line.startswith('calls='):
        after_calls = True
        ncalls = int(line[6:].split()[0])
        continue
    if line[0] in '0123456789+-*':
        parts = line.split()
        if len(parts) < 2:
            continue
        cost = int(parts[1])
        if after_calls:
            calls_cost[cfn][fn] += cost
            calls_n[cfn][fn] += ncalls
            after_calls = False
        else:
            self_cost[fn] += cost
            total += cost

print('total self cost: %d (%.0f per unit)' % (total, total / per))
for f, c in sorted(self_cost.items(), key=lambda x: -x[1])[:top]:
    print('%10.0f %5.1f%%  %s' % (c / per, 100.0 * c / total, f[:150]))
for sub in callers_of:
    for callee in [c for c in calls_cost if sub in c]:
        print('\ncallers of %s:' % callee[:120])
        for caller, c in sorted(calls_cost[callee].items(), key=lambda x: -x[1])[:12]:
            print('%10.0f  %6.2f calls  %s' % (c / per, calls_n[callee][caller] / per, caller[:140]))
