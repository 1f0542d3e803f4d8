"""The rollback service: the way back, owned by one service that needs no other to act.

It keeps working while the planner is down, because everything it needs to restore a target
is on the target itself (the restore point the executor recorded) and in the trigger event.
"""
