"""A local stand-in for the Telegram Bot API: takes messages, shows them, injects faults and limits.

Point aiogram (or TELEGRAM_API_URL) at it: `TelegramAPIServer.from_base("http://127.0.0.1:8081")`.

Bot API (any token shaped `<digits>:<letters>`; methods are case-insensitive):
  /bot<token>/sendMessage   form, multipart or JSON; answers a Bot API `Message`
                            (message_id counts up per chat; chat type private for
                            positive ids, group/supergroup for negative). With
                            parse_mode=HTML the text is checked as Telegram does (400
                            "can't parse entities"); over 4096 UTF-16 units: 400.
                            A chat id that is not a number (e.g. "@name"): 400 chat not found.
  /bot<token>/getUpdates    long polling with offset, limit, timeout (≤ 50 s)
  /bot<token>/getMe, deleteWebhook, setMyCommands, deleteMyCommands, getMyCommands

Operator and test endpoints:
  GET    /sandbox/messages[?chat_id=]  every message received, oldest first
  DELETE /sandbox/messages             forget them
  GET    /sandbox/requests[?chat_id=]  every Bot API call and the status it got
  POST   /sandbox/faults   {"kind": "429"|"500"|"502"|"slow"|"403", "count": 5 (-1: until
                           cleared), "retry_after": 1, "delay": 2.0, "chat_id": 42,
                           "method": "sendMessage"}; faults are served in the order queued,
                           each call taking the first that matches its method and chat
  GET    /sandbox/faults, DELETE /sandbox/faults
  POST   /sandbox/incoming {"chat_id": 42, "text": "/status", "from_id": 7}: an update
  GET    /sandbox/stats    received, send_requests, total_429, limit_429, fault_429,
                           faults (served, by kind), by_status, faults_pending, ...
  GET    /sandbox/limits, POST /sandbox/limits {"enforce": true, "per_chat_interval": 1.0,
                           "group_max": 20, "group_window": 60, "global_max": 30,
                           "global_window": 1.0, "leniency": 0.9}
  POST   /sandbox/reset    forget everything but the limits

The enforced rule is documented in `limits.py`. The bot token is never printed or logged.
Start it from code with `services.telegram_sandbox.app.start_sandbox`. This package imports
nothing itself: every `intentflow` command imports it (for the command's options), and
aiohttp's server need not load in the other services' processes.
"""
