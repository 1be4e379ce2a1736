"""Running an enrollment's steps: the at-most-once send, waits, and deferrals (quiet hours).

Pure of Prefect's flow machinery: the flow and the task in flows/ and tasks/ call these and
format what happened. Every state change goes through `followups.lifecycle.store`.
"""
