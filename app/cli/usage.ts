/**
 * Command line errors: one line that says what was wrong, and where to look.
 *
 * @module
 */

/** A command line that cannot be run as given. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}
