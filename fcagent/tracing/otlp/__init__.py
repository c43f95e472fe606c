"""OpenTelemetry in and out: GenAI spans of any instrumentation become episodes (`inbound`), and episodes
become GenAI spans for a file, an OTLP endpoint, or live from a recorder (`outbound`). `genai` maps the
conventions to fcagent's records, `wire` reads and writes OTLP files (JSON or protobuf). Needs the `otel`
extra (`pip install 'fcagent[otel]'`); nothing here is imported by `import fcagent`."""
