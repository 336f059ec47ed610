"""Non-training tools (jsonargparse subcommands of `synthpriv`) and shared file / run-folder helpers."""
