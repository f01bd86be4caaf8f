# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""The operators: installed as ``towhee_rt.backends``, and shipped verbatim into every model of a
generated repository as the package ``towhee_ops`` (``towhee_rt.shipped`` lists what ships).
"""
