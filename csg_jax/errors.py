"""The one exception type that reaches users as a short message instead of a traceback."""


class CSGError(Exception):
  """A problem the user can fix (bad config, missing file, bad data).

  The message names the cause and the fix. Launchers print it on one line and exit non-zero.
  """
