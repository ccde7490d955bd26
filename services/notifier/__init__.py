"""The notifier: Telegram messages for signals and failed orders, delivered within Telegram's limits."""
