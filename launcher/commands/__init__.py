"""One module per `sa-megatron` subcommand; each exposes `register(subparsers)`."""
