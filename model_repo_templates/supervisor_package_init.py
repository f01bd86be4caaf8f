# SHIPPED: copied verbatim into the image's build context as towhee_rt_supervisor/__init__.py
# (towhee_rt.shipped.SUPERVISOR). Standard library only; never towhee_rt.
"""towhee_rt's supervisor of tritonserver, copied from towhee_rt.triton."""
