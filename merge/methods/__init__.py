"""Merge methods as pure tensor functions (tensor in, tensor out), one small module each.

Each method module registers itself in `merge.registry`; the state-dict layer (`merge.state_dict`)
and the streamed checkpoint layer only loop over keys and call these.
"""
