"""Merge methods as pure tensor functions (tensor in, tensor out), one small module each.

Each method module defines its `Method` constant(s) (`merge.methods.base`) and imports nothing
from `merge.registry`; the registry imports the modules and lists their methods. The state-dict
layer (`merge.state_dict`) and the streamed checkpoint layer only loop over keys and call these.
"""
