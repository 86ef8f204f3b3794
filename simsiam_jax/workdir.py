"""The workdir of a run: checked before any work, locked while a run writes into it, and
the SIGTERM flag by which a preempted run saves and stops (checkpointing.py has the loop)."""

import json
import os
import signal
import socket
import tempfile
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

LOCK_FILENAME = '.simsiam.lock'


class WorkdirError(ValueError):
  """The workdir cannot be used; the message names it."""


def _require(condition: bool, flag: str, value, requirement: str):
  if not condition:
    raise WorkdirError(f'{flag}={value!r}: {requirement}')


def validate(workdir: str | None):
  """The workdir is a directory this process can write, or can be created as one."""
  _require(bool(workdir), '--workdir', workdir, 'is required')
  # Remote file systems (gs://) have no local parent to check.
  if '://' in workdir:
    return
  parent = os.path.dirname(os.path.abspath(workdir))
  _require(os.path.isdir(parent), '--workdir', workdir,
           f'parent directory {parent} does not exist')
  _require(not os.path.exists(workdir) or os.path.isdir(workdir), '--workdir', workdir,
           'exists and is not a directory')
  # A probe file, as permission bits do not tell (root, read-only mounts); the workdir itself
  # is left to the run to create, so that a refused command leaves nothing behind.
  try:
    with tempfile.TemporaryFile(dir=workdir if os.path.isdir(workdir) else parent):
      pass
  except OSError as error:
    raise WorkdirError(
        f'--workdir={workdir!r}: cannot write there ({error.strerror})') from error


class PreemptionFlag:
  """A signal handler; `requested` becomes True once it has been called."""

  def __init__(self):
    self.requested = False

  def __call__(self, signum, frame):
    del signum, frame
    self.requested = True


def install_sigterm_handler() -> PreemptionFlag:
  """Replaces SIGTERM's default (exit at once) by setting a flag the loop polls.

  Must be called from the main thread.
  """
  flag = PreemptionFlag()
  signal.signal(signal.SIGTERM, flag)
  return flag


def acquire_lock(workdir: str | os.PathLike) -> str | None:
  """Takes `workdir/LOCK_FILENAME`, or raises WorkdirError if a live run holds it.

  A lock left by a dead process on this host is taken over. Returns the lock's path, or
  None for non-local workdirs (gs://...), where pids and O_EXCL mean nothing.
  """
  workdir = os.fspath(workdir)
  if '://' in workdir:
    logging.warning('No workdir lock on %s: only local workdirs are locked.', workdir)
    return None
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILENAME)
  if _try_create_lock(path):
    return path
  holder = _read_lock(path)
  if holder['hostname'] != socket.gethostname() or _pid_alive(holder['pid']):
    raise WorkdirError(
        f'{workdir} is in use by process {holder["pid"]} on {holder["hostname"]} (lock file '
        f'{path}). Use another workdir, or delete the lock file if that run is dead.')
  logging.warning('Taking over the lock %s of process %d, which is no longer running.',
                  path, holder['pid'])
  os.remove(path)
  if not _try_create_lock(path):
    raise WorkdirError(f'Another run took the lock {path} of {workdir} just now.')
  return path


def acquire_lock_for_every_process(workdir: str | os.PathLike) -> str | None:
  """Process 0 takes the workdir's lock (`acquire_lock`) on behalf of the run, and every
  process learns whether it did: all of them fail together, instead of the others going
  on to wait for process 0 at their next collective. Returns the lock's path on process 0,
  None on the others (and for non-local workdirs)."""
  path, error = None, None
  if jax.process_index() == 0:
    try:
      path = acquire_lock(workdir)
    except Exception as e:  # pylint: disable=broad-except
      error = e  # Raised once the others know.
  if jax.process_count() > 1:
    taken = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not taken and error is None:
      error = WorkdirError(f'{workdir}: process 0 could not take the workdir lock; its log '
                           'says why.')
  if error is not None:
    raise error
  return path


def _lock_owner() -> dict[str, Any]:
  return {'pid': os.getpid(), 'hostname': socket.gethostname()}


def _try_create_lock(path: str) -> bool:
  """Atomically creates the lock file with its full content; False if it exists."""
  # Written aside and hard-linked into place, so nobody ever reads a half-written lock.
  staging_path = f'{path}.{os.getpid()}'
  with open(staging_path, 'w') as f:
    json.dump(_lock_owner(), f)
  try:
    os.link(staging_path, path)
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(staging_path)


def _read_lock(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      holder = json.load(f)
    return {'pid': int(holder['pid']), 'hostname': str(holder['hostname'])}
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise WorkdirError(f'Unreadable lock file {path} ({error}); delete it if no run is '
                          'using this workdir.') from error


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, owned by another user.
    return True
  return True


def release_lock(path: str):
  try:
    if _read_lock(path) == _lock_owner():
      os.remove(path)
  except WorkdirError:
    logging.warning('Lock file %s vanished or changed; leaving it.', path)
