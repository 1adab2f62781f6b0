//! Loading a model from a path or id (OWNER: helper G).
