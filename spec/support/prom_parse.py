#!/usr/bin/env python3
"""Parses a /metrics exposition from stdin with the official Python client's
parsers and prints what they understood, as JSON:

  {"types": {"<sample name>": "<family type>", ...},
   "values": {"<sample name>{k=v,...}": <value>, ...}}

  python3 prom_parse.py text         # prometheus_client.parser (format 0.0.4)
  python3 prom_parse.py openmetrics  # prometheus_client.openmetrics.parser

A parse error exits non-zero with the parser's message.
"""
import json
import sys

fmt = sys.argv[1]
data = sys.stdin.read()
if fmt == "text":
    from prometheus_client.parser import text_string_to_metric_families
else:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

types, values = {}, {}
for fam in text_string_to_metric_families(data):
    for s in fam.samples:
        types[s.name] = fam.type
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        values[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps({"types": types, "values": values}))
