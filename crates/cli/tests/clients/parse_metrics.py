"""Parses OpenMetrics text on stdin with prometheus_client's parser (which
raises on anything malformed) and prints its samples as JSON: a list of
{"family", "type", "name", "labels", "value"}."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append(
            {
                "family": family.name,
                "type": family.type,
                "name": s.name,
                "labels": s.labels,
                "value": s.value,
            }
        )
json.dump(samples, sys.stdout)
