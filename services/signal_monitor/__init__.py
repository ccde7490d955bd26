"""Signal monitor: strategies over market data, the TradingView webhook, and the gates."""
