"""The virtual-time fleet simulator (``fwrescue sim``): the real sans-IO cores
(``RecipientSession``, ``DonorResponder``, ``Codec``, ``SwarmScheduler``) for thousands of
nodes over a modelled network, driven by a discrete-event loop. See docs/simulator.md."""
