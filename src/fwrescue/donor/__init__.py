"""The donor: everything that hands images to recipients.

``responder`` (:class:`DonorResponder`: the donor's side of the negotiation, sans-IO, like
``fwrescue.protocol``), ``service`` (:class:`DonorService`: a responder on a link joined with
the transfer server; peers and the console run it), ``repository`` (:class:`ConsoleDonor`:
the console's repository of verified packages, donated through a service) and ``cli``
(``fwrescue donor``).
"""
