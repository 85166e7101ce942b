"""`nanochat-gateway synth`: SFT conversations written by any OpenAI-compatible endpoint.

A client of the HTTP API only (a hosted provider, or this gateway), never of the engine. Modules:
  catalog.py       categories of harm, borderline requests, personas, opening and attack styles (data)
  plan.py          what conversation N asks, from (seed, N) alone
  prompts.py       the generation and judge prompts, and their JSON schemas
  client.py        chat completions over aiohttp: retries, shared 429 pause, request shape adaptation
  retry.py         which answers to retry and how long to wait
  parse.py         the conversation in a reply, however it is wrapped
  conversation.py  nanochat's CustomJSON line format and its rules
  filter.py        phrase checks of the assistant's behaviour
  dedupe.py        exact and fuzzy duplicate first user messages
  length.py        rendered token counts against the model's context
  store.py         the output file and its sidecar, line by line, resumable
  run.py           one run: dispatch, settle, summarise
  progress.py      the progress line and the final summary
  check.py         `synth check FILE`
  cli.py           the command's arguments
"""
