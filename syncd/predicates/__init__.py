"""Filters bound to one device: values attached, evaluated in memory, split into partitions.

Strategy: ``syncd.filters`` is the filter language's syntax and sits below the client model
(the model validates filters while it is parsed); binding needs the model (columns, profiles,
memberships), so it lives one layer up, here. ``bound`` attaches a device's parameter values
and answers what each node reads; ``memory`` evaluates a bound filter against a row;
``partition`` splits a claim-bound list into partitions many devices share. The SQL form of a
bound filter is the store's job (``syncd.store.filter_sql``, ``syncd.store.bound_filter``),
since the store is the only package that writes SQL.
"""
