"""One surge across processes: what several server processes share (Redis notifications,
pending bandit feedback) and how each keeps serving when that shared service is down."""
