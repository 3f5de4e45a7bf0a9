"""Language models behind `POST /v1/chat/completions`: upstream OpenAI-compatible
providers and a local runtime, each streaming `Piece`s, with the routing policies
(fallback, cascade, time-boxed, rules, bandit) applied to them."""
