"""When a step may be sent: send windows, quiet hours, holidays and business days (pure functions)."""
