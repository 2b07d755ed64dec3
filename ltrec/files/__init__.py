"""What every other package stands on: the one error type a user sees (`UserError`), reading files with size
limits and writing them atomically (`safe`), and the run folder's file format (`runs`).

Imports nothing of ltrec's but itself, and never torch: every verb, torch-free ones included, uses it.
"""
